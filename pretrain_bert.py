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
from megatron_core.models.bert import bert_pretraining_losses
from megatron_core.training.batches import get_batch_bert
from megatron_core.training.data_options import add_data_options_arguments
from megatron_core.training.data_providers import bert_datasets
from megatron_core.training.loop import pretrain
from megatron_core.training.train_spec import TrainSpec


def forward_step(data_iterator, model, run):
    batch = get_batch_bert(data_iterator)
    output = model(batch.tokens, batch.padding_mask, tokentype_ids=batch.types, lm_labels=batch.lm_labels)

    def loss_func(output):
        lm_loss, binary_logits = output
        losses = bert_pretraining_losses(lm_loss, binary_logits, batch.loss_mask, batch.sentence_order)
        return sum(losses.values()), {name: value.detach() for name, value in losses.items()}
    return output, loss_func


def train_valid_test_datasets_provider(run, train_val_test_num_samples):
    return bert_datasets(run.config.data, run.config.training, run.data_options, run.tokenizer,
                         train_val_test_num_samples)


# The model is models/registry.py's "bert" (Megatron: no token types without the binary head);
# every stage reads the batch for its padding mask.
TRAIN_SPEC = TrainSpec("bert", forward_step, train_valid_test_datasets_provider, add_data_options_arguments,
                       data_on_every_stage=True)


def main(argv=None):
    pretrain(TRAIN_SPEC, argv)


if __name__ == "__main__":
    run(main)
