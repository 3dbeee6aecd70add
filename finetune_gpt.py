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
from megatron_core.training.batches import get_batch_finetune
from megatron_core.training.data_providers import finetune_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss
from megatron_core.training.train_spec import TrainSpec


def forward_step(data_iterator, model, run):
    batch = get_batch_finetune(data_iterator)   # loss_mask: 1 on text tokens and the EOD only
    output = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels)
    return output, masked_lm_loss(batch.loss_mask)


def train_valid_test_datasets_provider(run, train_val_test_num_samples):
    return finetune_datasets(run.config.data, run.config.training, run.tokenizer, train_val_test_num_samples)


# The model is models/registry.py's "gpt", as pretrain_gpt.py's.
TRAIN_SPEC = TrainSpec("gpt", forward_step, train_valid_test_datasets_provider)


def main(argv=None):
    pretrain(TRAIN_SPEC, argv)


if __name__ == "__main__":
    run(main)
