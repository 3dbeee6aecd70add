#!/usr/bin/env python
"""Pretrain a GPT (or a Llama-style model) with Megatron-LM's flags, at any TP x PP x DP layout.

    torchrun --nproc-per-node 2 pretrain_gpt.py --tensor-model-parallel-size 2 \\
        --num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128 \\
        --micro-batch-size 8 --global-batch-size 32 --train-iters 300 --lr 1e-3 \\
        --data-path data/zh_text_document --tokenizer-type BertWordPieceLowerCase \\
        --vocab-file vocab.txt

Llama-style: add --normalization RMSNorm --swiglu --position-embedding-type rope
--group-query-attention --num-query-groups N --untie-embeddings-and-output-weights
--disable-bias-linear. `python pretrain_gpt.py ...` without a launcher runs one process.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from megatron_core.cli import run  # noqa: E402
from megatron_core.data.builder import build_train_valid_test_datasets  # noqa: E402
from megatron_core.errors import ConfigError  # noqa: E402
from megatron_core.models.gpt import GPTModel, masked_mean  # noqa: E402
from megatron_core.training.arguments import transformer_config_from_args  # noqa: E402
from megatron_core.training.loop import pretrain  # noqa: E402


def model_provider(args, stage):
    """One pipeline chunk of the GPT the flags describe."""
    if not args.tokenizer_type:
        raise ConfigError("--tokenizer-type is required: it sets the vocabulary size (e.g. BertWordPieceLowerCase "
                          "with --vocab-file).")
    return GPTModel(transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings,
                    stage=stage)


def get_batch(data_iterator):
    """tokens and labels of one micro-batch: a window of seq-length + 1 tokens, shifted by one."""
    text = next(data_iterator)["text"].long()
    return text[:, :-1].contiguous(), text[:, 1:].contiguous()


def loss_func(per_token_loss):
    loss = masked_mean(per_token_loss)
    return loss, {"lm loss": loss.detach()}


def forward_step(data_iterator, model):
    tokens, labels = get_batch(data_iterator)
    device = next(model.parameters()).device
    return model(tokens.to(device), labels=labels.to(device)), loss_func


def train_valid_test_datasets_provider(args, train_val_test_num_samples):
    if not args.data_path:
        raise ConfigError("--data-path is required: the prefix tools/preprocess_data.py printed "
                          "(e.g. data/zh_text_document).")
    return build_train_valid_test_datasets(args.data_path, args.split, train_val_test_num_samples,
                                           args.seq_length, args.seed, args.data_cache_path)


def main(argv=None):
    pretrain(train_valid_test_datasets_provider, model_provider, forward_step, argv=argv)


if __name__ == "__main__":
    run(main)
