#!/usr/bin/env python
"""Pretrain RoFormer as Zhouwenwang: one model, masked LM and left-to-right LM at once.

    torchrun --nproc-per-node 2 pretrain_roformer.py --tensor-model-parallel-size 2 \\
        --num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128 \\
        --micro-batch-size 8 --global-batch-size 32 --train-iters 300 --lr 1e-4 \\
        --data-path data/zh_text_sentence --tokenizer-type BertWordPieceLowerCase \\
        --vocab-file vocab.txt --roformer-lm-prob 0.5

Each sample is an LM sample with probability --roformer-lm-prob, else a masked-LM sample;
its token types select the objective (1: causal, 0: bidirectional; models/roformer.py), so
one batch mixes both. Positions are rotary on adjacent channel pairs (the defaults here:
--position-embedding-type rope --rotary-interleaved). Layers are pre-LN as Zhouwenwang;
--layernorm-position post gives HF's RoFormer. The data is sentence-split
(tools/preprocess_data.py --split-sentences); "lm loss" is the mean over every predicted token.
"""
from megatron_core.cli import run
from megatron_core.training.batches import get_batch_roformer
from megatron_core.training.data_options import add_data_options_arguments
from megatron_core.training.data_providers import roformer_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss
from megatron_core.training.train_spec import TrainSpec


def add_roformer_arguments(parser):
    add_data_options_arguments(parser)
    parser.set_defaults(position_embedding_type="rope", rotary_interleaved=True)
    return parser


def forward_step(data_iterator, model, run):
    batch = get_batch_roformer(data_iterator)
    output = model(batch.tokens, batch.padding_mask, tokentype_ids=batch.types, lm_labels=batch.labels)
    lm_loss = masked_lm_loss(batch.loss_mask)
    return output, lambda output: lm_loss(output[0])     # output: (per-token loss, binary logits)


def train_valid_test_datasets_provider(run, train_val_test_num_samples):
    return roformer_datasets(run.config.data, run.config.training, run.data_options, run.tokenizer,
                             train_val_test_num_samples)


# The model is models/registry.py's "roformer": no pooler, no binary head.
TRAIN_SPEC = TrainSpec("roformer", forward_step, train_valid_test_datasets_provider, add_roformer_arguments,
                       data_on_every_stage=True)


def main(argv=None):
    pretrain(TRAIN_SPEC, argv)


if __name__ == "__main__":
    run(main)
