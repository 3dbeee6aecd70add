"""finetune_classification.py's task flags (Megatron-LM's tasks/main.py names, plus ours).

    --task NAME              afqmc tnews iflytek ocnli cmnli csl wsc (CLUE), chid c3 (multiple
                             choice), or jsonl with --text-key [--text-pair-key] --label-key
    --train-data F           the task's training file (CLUE: train.json)
    --valid-data F           scored every --eval-interval iterations and at each epoch's end
    --test-data F            predicted with --predict (CLUE: test.json, no labels)
    --pretrained-checkpoint DIR   encoder weights to start from (any of our layouts, Megatron-LM's)
    --epochs N               sets --train-iters: N passes over the training set
    --predict                write CLUE's submission file for --test-data (or --valid-data)
    --predict-output DIR     where (default: --save, else the current directory)

--train-iters and --num-classes follow from the task and the files; given, they must agree.
"""
from __future__ import annotations


def add_task_arguments(parser):
    g = parser.add_argument_group("downstream task")
    g.add_argument("--task", default=None, help="afqmc tnews iflytek ocnli cmnli csl wsc chid c3, or jsonl")
    g.add_argument("--train-data", default=None)
    g.add_argument("--valid-data", default=None)
    g.add_argument("--test-data", default=None)
    g.add_argument("--pretrained-checkpoint", default=None)
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--text-key", default=None)
    g.add_argument("--text-pair-key", default=None)
    g.add_argument("--label-key", default=None)
    g.add_argument("--num-classes", type=int, default=None)
    g.add_argument("--multiple-choice", action="store_true", help="set by --task chid / c3")
    g.add_argument("--class-labels", default=None, help="a JSON list of the label names; set by --task")
    g.add_argument("--predict", action="store_true")
    g.add_argument("--predict-output", default=None)
    return parser
