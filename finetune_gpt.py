#!/usr/bin/env python
"""Finetune a GPT (or a Llama-style model) on {"prompt", "text"} JSON lines: loss on the text only.

    torchrun --nproc-per-node 2 finetune_gpt.py --tensor-model-parallel-size 2 \\
        --num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128 \\
        --micro-batch-size 8 --global-batch-size 32 --train-iters 300 --lr 1e-4 \\
        --data-path sft.jsonl --split 98,2,0 --tokenizer-type BertWordPieceLowerCase \\
        --vocab-file vocab.txt

Each line is one sample, prompt ids + text ids + EOD, padded to --seq-length + 1; only the
text and its EOD carry loss (the prompt and the padding never do). --split divides the
file by lines; each split is read for as many shuffled epochs as the run needs. The model
flags are pretrain_gpt.py's. Starting from pretrained weights (--load, with --finetune to
start the iteration count at 0) arrives with checkpoints; until then the model trains from
its initialization. `python finetune_gpt.py ...` without a launcher runs one process.
"""
from megatron_core.cli import run
from megatron_core.models.gpt import GPTModel
from megatron_core.models.rank_parameters import ModelShape
from megatron_core.training.arguments import build_run_config, transformer_config_from_args
from megatron_core.training.batches import get_batch_finetune
from megatron_core.training.data_providers import finetune_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss


def model_provider(args, stage):
    """One pipeline chunk of the GPT the flags describe."""
    return GPTModel(transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings,
                    stage=stage)


def model_shape(args):
    """The model model_provider builds, without weights: its parameter count and memory estimate."""
    return ModelShape("gpt", transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings)


def forward_step(data_iterator, model):
    batch = get_batch_finetune(data_iterator)   # loss_mask: 1 on text tokens and the EOD only
    output = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels)
    return output, masked_lm_loss(batch.loss_mask)


def train_valid_test_datasets_provider(args, train_val_test_num_samples):
    run_config = build_run_config(args)
    return finetune_datasets(run_config.data, run_config.training, args.tokenizer, train_val_test_num_samples)


def main(argv=None):
    pretrain(train_valid_test_datasets_provider, model_provider, forward_step, argv=argv, model_shape=model_shape)


if __name__ == "__main__":
    run(main)
