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
from megatron_core.pipeline import P2PConfig
from megatron_core.training.arguments import add_encoder_decoder_arguments
from megatron_core.training.batches import get_batch_t5
from megatron_core.training.data_options import add_data_options_arguments
from megatron_core.training.data_providers import t5_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.loss_funcs import masked_lm_loss
from megatron_core.training.train_spec import TrainSpec


def forward_step(data_iterator, model, run):
    batch = get_batch_t5(data_iterator)
    output = model(batch.encoder_input_ids, batch.decoder_input_ids, batch.encoder_attention_mask,
                   batch.decoder_attention_mask, labels=batch.labels,
                   enc_dec_attention_mask=batch.enc_dec_attention_mask)
    return output, masked_lm_loss(batch.loss_mask)


def train_valid_test_datasets_provider(run, train_val_test_num_samples):
    return t5_datasets(run.config.data, run.config.training, run.data_options, run.tokenizer,
                       train_val_test_num_samples)


def p2p_config_provider(run):
    """Encoder stages send the encoder's hidden states; decoder stages send (decoder hidden,
    encoder output), which the next decoder stage cross-attends to."""
    config = run.config
    split = config.parallel.pipeline_model_parallel_split_rank
    scale = config.parallel.tensor_model_parallel_size if config.parallel.sequence_parallel else 1
    micro_batch, hidden = config.training.micro_batch_size, config.model.hidden_size
    encoder = (config.training.seq_length // scale, micro_batch, hidden)
    decoder = (run.data_options.decoder_seq_length // scale, micro_batch, hidden)
    return P2PConfig(stage_output_shapes=lambda stage: [encoder] if split is not None and stage < split
                     else [decoder, encoder], dtype=config.model.params_dtype)


def add_t5_arguments(parser):
    return add_data_options_arguments(add_encoder_decoder_arguments(parser))


# The model is models/registry.py's "t5". Every stage reads the batch: decoder stages need
# the encoder's padding mask as well.
TRAIN_SPEC = TrainSpec("t5", forward_step, train_valid_test_datasets_provider, add_t5_arguments,
                       data_on_every_stage=True, p2p_config=p2p_config_provider)


def main(argv=None):
    pretrain(TRAIN_SPEC, argv)


if __name__ == "__main__":
    run(main)
