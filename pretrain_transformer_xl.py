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
from megatron_core.errors import ConfigError
from megatron_core.models.rank_parameters import ModelShape
from megatron_core.models.transformer_xl import TransformerXLModel
from megatron_core.training.arguments import build_run_config, transformer_config_from_args
from megatron_core.training.batches import get_batch_transformer_xl
from megatron_core.training.data_options import add_data_options_arguments, data_options_from_args
from megatron_core.training.data_providers import transformer_xl_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss


def model_provider(args, stage):
    """One pipeline chunk: relative positions, and Chinese-Transformer-XL's tanh GELU unless --swiglu."""
    model = TransformerXLModel(_config(args), args.padded_vocab_size, _mem_length(args), stage=stage)
    model.batch_settings = (args.tokenizer.eod, data_options_from_args(args))
    return model


def _config(args):
    config = transformer_config_from_args(args)
    return config.replace(position_embedding_type="relative_xl",
                          activation="gelu_tanh" if config.activation == "gelu" else config.activation)


def _mem_length(args) -> int:
    mem_length = args.seq_length if args.mem_length is None else args.mem_length
    if mem_length < 0:
        raise ConfigError(f"--mem-length must be 0 (no memory) or more, got {mem_length}.")
    return mem_length


def model_shape(args):
    """The model model_provider builds, without weights: its parameter count and memory estimate."""
    return ModelShape("transformer_xl", _config(args), args.padded_vocab_size, mem_length=_mem_length(args))


def forward_step(data_iterator, model):
    eod, options = model.batch_settings
    batch = get_batch_transformer_xl(data_iterator, eod, options)
    # The stage's mems of this micro-batch's text stream are read and updated in model.memory.
    output, _ = model(batch.tokens, labels=batch.labels, use_memory=True)
    return output, masked_lm_loss(batch.loss_mask)


def train_valid_test_datasets_provider(args, train_val_test_num_samples):
    run_config = build_run_config(args)
    return transformer_xl_datasets(run_config.data, run_config.training, train_val_test_num_samples)


def add_transformer_xl_arguments(parser):
    parser.add_argument("--mem-length", type=int, default=None,
                        help="Positions of earlier segments each layer attends to (Chinese-Transformer-XL's flag); "
                             "--seq-length if not given, 0 turns the memory off.")
    return add_data_options_arguments(parser)


def main(argv=None):
    pretrain(train_valid_test_datasets_provider, model_provider, forward_step, add_transformer_xl_arguments, argv,
             model_shape=model_shape)


if __name__ == "__main__":
    run(main)
