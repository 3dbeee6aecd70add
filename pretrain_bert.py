#!/usr/bin/env python
"""Pretrain BERT (masked LM + NSP or SOP) with Megatron-LM's flags, at any TP x PP x DP layout.

    torchrun --nproc-per-node 2 pretrain_bert.py --pipeline-model-parallel-size 2 \\
        --num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128 \\
        --micro-batch-size 8 --global-batch-size 32 --train-iters 300 --lr 1e-4 \\
        --data-path data/zh_text_sentence --tokenizer-type BertWordPieceLowerCase \\
        --vocab-file vocab.txt --wwm

The data is sentence-split (tools/preprocess_data.py --split-sentences). Layers are pre-LN
as Megatron's BERT and Erlangshen-MegatronBert (--layernorm-position pre, the default);
--layernorm-position post builds the original post-LN BERT (Erlangshen-Roberta, HF
BertModel). The binary head predicts the next sentence, or the sentence order with --sop;
--bert-no-binary-head drops it (and the token types), leaving the masked LM alone.
--wwm masks Chinese whole words (jieba). Logged as Megatron does: "lm loss" and the binary
head's "sop loss" (so named for NSP too); the loss trained is their sum.
"""
from megatron_core.cli import run
from megatron_core.models.bert import BertModel, bert_pretraining_losses
from megatron_core.models.rank_parameters import ModelShape
from megatron_core.training.arguments import build_run_config, transformer_config_from_args
from megatron_core.training.batches import get_batch_bert, reads_data_on_every_stage
from megatron_core.training.data_options import add_data_options_arguments, data_options_from_args
from megatron_core.training.data_providers import bert_datasets
from megatron_core.training.loop import pretrain


def model_provider(args, stage):
    """One pipeline chunk of the BERT the flags describe (Megatron: no token types without the binary head)."""
    return BertModel(transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings,
                     num_tokentypes=2 if args.bert_binary_head else 0, add_binary_head=args.bert_binary_head,
                     stage=stage)


def model_shape(args):
    """The model model_provider builds, without weights: its parameter count and memory estimate."""
    binary = args.bert_binary_head
    return ModelShape("bert", transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings,
                      num_tokentypes=2 if binary else 0, add_pooler=binary, add_binary_head=binary)


def forward_step(data_iterator, model):
    batch = get_batch_bert(data_iterator)
    output = model(batch.tokens, batch.padding_mask, tokentype_ids=batch.types, lm_labels=batch.lm_labels)

    def loss_func(output):
        lm_loss, binary_logits = output
        losses = bert_pretraining_losses(lm_loss, binary_logits, batch.loss_mask, batch.sentence_order)
        return sum(losses.values()), {name: value.detach() for name, value in losses.items()}
    return output, loss_func


def train_valid_test_datasets_provider(args, train_val_test_num_samples):
    run_config = build_run_config(args)
    return bert_datasets(run_config.data, run_config.training, data_options_from_args(args), args.tokenizer,
                         train_val_test_num_samples)


def main(argv=None):
    pretrain(train_valid_test_datasets_provider, model_provider, forward_step, add_data_options_arguments, argv,
             data_on_every_stage=reads_data_on_every_stage("bert"), model_shape=model_shape)


if __name__ == "__main__":
    run(main)
