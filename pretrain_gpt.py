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
from megatron_core.training.batches import get_batch_gpt
from megatron_core.training.data_options import add_data_options_arguments
from megatron_core.training.data_providers import gpt_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss
from megatron_core.training.train_spec import TrainSpec


def forward_step(data_iterator, model, run):
    batch = get_batch_gpt(data_iterator, run.tokenizer.eod, run.data_options)
    output = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels)
    return output, masked_lm_loss(batch.loss_mask)


def train_valid_test_datasets_provider(run, train_val_test_num_samples):
    return gpt_datasets(run.config.data, run.config.training, train_val_test_num_samples)


# The model (GPT, or Llama-style by its flags) is models/registry.py's "gpt".
TRAIN_SPEC = TrainSpec("gpt", forward_step, train_valid_test_datasets_provider, add_data_options_arguments,
                       data_on_every_stage=lambda run: run.data_options.reset_attention_mask)


def main(argv=None):
    pretrain(TRAIN_SPEC, argv)


if __name__ == "__main__":
    run(main)
