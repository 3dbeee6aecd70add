#!/usr/bin/env python
"""Pretrain a Transformer-XL (as THUDM's Chinese-Transformer-XL) at any TP x PP x DP layout.

    torchrun --nproc-per-node 2 pretrain_transformer_xl.py --pipeline-model-parallel-size 2 \\
        --num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128 --mem-length 128 \\
        --micro-batch-size 8 --global-batch-size 32 --train-iters 300 --lr 1e-3 \\
        --data-path data/zh_text_document --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt

Row i of global batch k + 1 continues the text of row i of batch k, and each layer attends
to the last --mem-length positions of the rows' earlier segments (segment memory, kept per
pipeline stage and micro-batch). Validation runs its own text streams on a memory of its own.
"""
from megatron_core.cli import run
from megatron_core.training.batches import get_batch_transformer_xl
from megatron_core.training.data_options import add_data_options_arguments
from megatron_core.training.data_providers import transformer_xl_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss
from megatron_core.training.train_spec import TrainSpec


def forward_step(data_iterator, model, run):
    batch = get_batch_transformer_xl(data_iterator, run.tokenizer.eod, run.data_options)
    # The stage's mems of this micro-batch's text stream are read and updated in model.memory.
    output, _ = model(batch.tokens, labels=batch.labels, use_memory=True)
    return output, masked_lm_loss(batch.loss_mask)


def train_valid_test_datasets_provider(run, train_val_test_num_samples):
    return transformer_xl_datasets(run.config.data, run.config.training, train_val_test_num_samples)


def add_transformer_xl_arguments(parser):
    parser.add_argument("--mem-length", type=int, default=None,
                        help="Positions of earlier segments each layer attends to (Chinese-Transformer-XL's flag); "
                             "--seq-length if not given, 0 turns the memory off.")
    return add_data_options_arguments(parser)


# The model is models/registry.py's "transformer_xl": relative positions, and
# Chinese-Transformer-XL's tanh GELU unless --swiglu.
TRAIN_SPEC = TrainSpec("transformer_xl", forward_step, train_valid_test_datasets_provider,
                       add_transformer_xl_arguments)


def main(argv=None):
    pretrain(TRAIN_SPEC, argv)


if __name__ == "__main__":
    run(main)
