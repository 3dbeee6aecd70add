#!/usr/bin/env python
"""Finetune a BERT / MegatronBERT / RoFormer classifier on a CLUE task or any labelled JSON lines.

    torchrun --nproc-per-node 2 finetune_classification.py --task afqmc \\
        --train-data afqmc/train.json --valid-data afqmc/dev.json --test-data afqmc/test.json \\
        --pretrained-checkpoint ckpt/bert --epochs 3 --tensor-model-parallel-size 2 \\
        --num-layers 12 --hidden-size 768 --num-attention-heads 12 --seq-length 128 \\
        --max-position-embeddings 512 --micro-batch-size 16 --global-batch-size 32 --lr 2e-5 \\
        --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt --save ckpt/afqmc --predict

Megatron-LM's tasks/main.py flags (--task, --train-data, --valid-data, --pretrained-checkpoint,
--epochs) with pretraining's model, parallelism and optimizer flags. Tasks: afqmc tnews
iflytek ocnli cmnli csl wsc (CLUE's files), chid c3 (multiple choice), and `--task jsonl
--text-key K [--text-pair-key K2] --label-key L`. megatron_core/tasks/classification_run.py
says what a run does; `python finetune_classification.py ...` without a launcher runs one process.
"""
from megatron_core.cli import run
from megatron_core.tasks.classification_run import classification_spec, task_options
from megatron_core.training.loop import pretrain


def main(argv=None):
    options, argv = task_options(argv)
    pretrain(classification_spec(options), argv)


if __name__ == "__main__":
    run(main)
