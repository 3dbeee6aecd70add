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
from megatron_core.cli import run
from megatron_core.models.gpt import GPTModel
from megatron_core.models.rank_parameters import ModelShape
from megatron_core.training.arguments import build_run_config, transformer_config_from_args
from megatron_core.training.batches import get_batch_gpt, reads_data_on_every_stage
from megatron_core.training.data_options import add_data_options_arguments, data_options_from_args
from megatron_core.training.data_providers import gpt_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss


def model_provider(args, stage):
    """One pipeline chunk of the GPT the flags describe; it carries what its batches need."""
    model = GPTModel(transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings,
                     stage=stage)
    model.batch_settings = (args.tokenizer.eod, data_options_from_args(args))
    return model


def model_shape(args):
    """The model model_provider builds, without weights: its parameter count and memory estimate."""
    return ModelShape("gpt", transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings)


def forward_step(data_iterator, model):
    eod, options = model.batch_settings
    batch = get_batch_gpt(data_iterator, eod, options)
    output = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels)
    return output, masked_lm_loss(batch.loss_mask)


def train_valid_test_datasets_provider(args, train_val_test_num_samples):
    run_config = build_run_config(args)
    return gpt_datasets(run_config.data, run_config.training, train_val_test_num_samples)


def main(argv=None):
    pretrain(train_valid_test_datasets_provider, model_provider, forward_step, add_data_options_arguments, argv,
             data_on_every_stage=lambda args: reads_data_on_every_stage("gpt", data_options_from_args(args)),
             model_shape=model_shape)


if __name__ == "__main__":
    run(main)
