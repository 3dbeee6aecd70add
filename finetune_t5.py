#!/usr/bin/env python
"""Finetune a T5 on {"source", "target"} JSON lines (summarization, question answering): loss on the target only.

    torchrun --nproc-per-node 2 finetune_t5.py --tensor-model-parallel-size 2 \\
        --encoder-num-layers 4 --decoder-num-layers 4 --hidden-size 256 --num-attention-heads 4 \\
        --encoder-seq-length 256 --decoder-seq-length 64 --micro-batch-size 8 --global-batch-size 32 \\
        --train-iters 300 --lr 1e-4 --data-path summaries.jsonl --split 98,2,0 \\
        --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt \\
        --load t5_pretrained/ --finetune --save t5_summaries/
    python tools/predict_t5.py --load t5_summaries/ --predict-data test.jsonl --predict-output predictions.jsonl

Each line is one sample: the source (cut to --encoder-seq-length) is the encoder's input,
[BOS] + target the decoder's, target + [EOS] its labels (cut to --decoder-seq-length);
only the target and its [EOS] carry loss (data/seq2seq_dataset.py). --source-key and
--target-key name other fields. --split divides the file by lines. The model, parallelism
(--pipeline-model-parallel-split-rank included) and optimizer flags are pretrain_t5.py's,
and so are the forward step and what pipeline stages exchange; --load a pretrain_t5.py
checkpoint with --finetune to start from its weights at iteration 0.
"""
from dataclasses import replace

from megatron_core.cli import run
from megatron_core.training.data_options import add_seq2seq_arguments
from megatron_core.training.data_providers import seq2seq_datasets
from megatron_core.training.loop import pretrain
from pretrain_t5 import TRAIN_SPEC as T5_PRETRAINING, add_t5_arguments


def train_valid_test_datasets_provider(run, train_val_test_num_samples):
    return seq2seq_datasets(run.config.data, run.config.training, run.data_options, run.tokenizer,
                            train_val_test_num_samples)


def add_finetune_t5_arguments(parser):
    return add_seq2seq_arguments(add_t5_arguments(parser))


TRAIN_SPEC = replace(T5_PRETRAINING, datasets_provider=train_valid_test_datasets_provider,
                     add_arguments=add_finetune_t5_arguments)


def main(argv=None):
    pretrain(TRAIN_SPEC, argv)


if __name__ == "__main__":
    run(main)
