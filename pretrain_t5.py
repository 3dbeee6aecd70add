#!/usr/bin/env python
"""Pretrain Megatron-LM's T5 (span corruption on sentence-split data) at any TP x PP x DP layout.

    torchrun --nproc-per-node 2 pretrain_t5.py --pipeline-model-parallel-size 2 \\
        --pipeline-model-parallel-split-rank 1 --encoder-num-layers 4 --decoder-num-layers 4 \\
        --hidden-size 256 --num-attention-heads 4 --encoder-seq-length 128 --decoder-seq-length 32 \\
        --micro-batch-size 8 --global-batch-size 32 --train-iters 300 --lr 1e-3 \\
        --data-path data/zh_text_sentence --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt

Sentinels are <extra_id_N> with --vocab-extra-ids N, else the vocabulary's [unusedN] slots.
With pipeline parallelism stages below --pipeline-model-parallel-split-rank hold the
encoder, the others the decoder and the head.
"""
from megatron_core.cli import run
from megatron_core.models.rank_parameters import ModelShape
from megatron_core.models.t5 import T5Model
from megatron_core.pipeline import P2PConfig
from megatron_core.training.arguments import (add_encoder_decoder_arguments, build_run_config,
                                              transformer_config_from_args)
from megatron_core.training.batches import get_batch_t5
from megatron_core.training.data_options import add_data_options_arguments, data_options_from_args
from megatron_core.training.data_providers import t5_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss


def model_provider(args, stage):
    """One pipeline stage of the T5 the flags describe: encoder layers, decoder layers, or both."""
    return T5Model(transformer_config_from_args(args), args.padded_vocab_size, args.decoder_num_layers,
                   args.max_position_embeddings, stage=stage)


def model_shape(args):
    """The model model_provider builds, without weights: its parameter count and memory estimate."""
    return ModelShape("t5", transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings,
                      decoder_num_layers=args.decoder_num_layers, decoder_seq_length=args.decoder_seq_length)


def forward_step(data_iterator, model):
    batch = get_batch_t5(data_iterator)
    output = model(batch.encoder_input_ids, batch.decoder_input_ids, batch.encoder_attention_mask,
                   batch.decoder_attention_mask, labels=batch.labels,
                   enc_dec_attention_mask=batch.enc_dec_attention_mask)
    return output, masked_lm_loss(batch.loss_mask)


def train_valid_test_datasets_provider(args, train_val_test_num_samples):
    run_config = build_run_config(args)
    return t5_datasets(run_config.data, run_config.training, data_options_from_args(args), args.tokenizer,
                       train_val_test_num_samples)


def p2p_config_provider(args):
    """Encoder stages send the encoder's hidden states; decoder stages send (decoder hidden,
    encoder output), which the next decoder stage cross-attends to."""
    split = args.pipeline_model_parallel_split_rank
    scale = args.tensor_model_parallel_size if args.sequence_parallel else 1
    encoder = (args.seq_length // scale, args.micro_batch_size, args.hidden_size)
    decoder = (args.decoder_seq_length // scale, args.micro_batch_size, args.hidden_size)
    return P2PConfig(stage_output_shapes=lambda stage: [encoder] if split is not None and stage < split
                     else [decoder, encoder], dtype=args.params_dtype)


def add_t5_arguments(parser):
    return add_data_options_arguments(add_encoder_decoder_arguments(parser))


def main(argv=None):
    # Every stage reads the batch: decoder stages need the encoder's padding mask as well.
    pretrain(train_valid_test_datasets_provider, model_provider, forward_step, add_t5_arguments, argv,
             p2p_config_provider=p2p_config_provider, data_on_every_stage=True,
             model_shape=model_shape)


if __name__ == "__main__":
    run(main)
