"""get_batch_* per family against tensors built by hand from the samples of tiny real datasets."""
import json

import numpy as np
import pytest
import torch

from megatron_core.data.tokenizers import build_tokenizer as build_tokenizer_by_name
from tests.harness.tiny_corpus import BERT_VOCAB, FINETUNE_JSONL, preprocess_zh_news
from megatron_core.training import batches
from megatron_core.training.config import DataConfig, TrainingConfig
from megatron_core.training.data_iterators import build_data_iterators
from megatron_core.training.data_options import DataOptions
from megatron_core.training.data_providers import (bert_datasets, build_tokenizer, finetune_datasets, gpt_datasets,
                                                   roformer_datasets, t5_datasets, transformer_xl_datasets)

pytestmark = pytest.mark.quick

MBS = 4
COUNTS = [64, 0, 0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    document = preprocess_zh_news(str(directory))
    sentence = preprocess_zh_news(str(directory), split_sentences=True)
    cache = str(directory / "cache")
    docs = DataConfig(data_path=[document], split="1", data_cache_path=cache,
                      tokenizer_type="BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    sentences = DataConfig(data_path=[sentence], split="1", data_cache_path=cache,
                           tokenizer_type="BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    training = TrainingConfig(micro_batch_size=MBS, global_batch_size=MBS, seq_length=24, train_iters=16)
    return docs, sentences, training, build_tokenizer(docs)


def first_micro_batch(dataset):
    return [dataset[i] for i in range(MBS)]


def stacked(samples, key):
    return torch.tensor(np.stack([s[key] for s in samples]))


# --- GPT --------------------------------------------------------------------------------------------

def test_ltor_masks_and_positions_restart_after_each_eod():
    eod = 0
    tokens = torch.tensor([[7, 8, 0, 9, 10, 0, 11],
                           [1, 2, 3, 4, 5, 6, 7]])
    loss_mask, attention_mask, positions = batches.ltor_masks_and_position_ids(
        tokens, eod, reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 6]]
    assert loss_mask.tolist() == [[1, 1, 0, 1, 1, 0, 1], [1] * 7]
    # row 0: documents {0,1,2} {3,4,5} {6}; a query sees the earlier tokens of its own document
    allowed = [[1, 0, 0, 0, 0, 0, 0],
               [1, 1, 0, 0, 0, 0, 0],
               [1, 1, 1, 0, 0, 0, 0],
               [0, 0, 0, 1, 0, 0, 0],
               [0, 0, 0, 1, 1, 0, 0],
               [0, 0, 0, 1, 1, 1, 0],
               [0, 0, 0, 0, 0, 0, 1]]
    assert (~attention_mask[0, 0]).long().tolist() == allowed
    assert (~attention_mask[1, 0]).long().tolist() == np.tril(np.ones((7, 7), dtype=int)).tolist()


def test_ltor_without_flags_is_plain_causal():
    tokens = torch.tensor([[7, 0, 9]])
    loss_mask, attention_mask, positions = batches.ltor_masks_and_position_ids(tokens, 0)
    assert attention_mask is None and positions.tolist() == [[0, 1, 2]] and loss_mask.tolist() == [[1, 1, 1]]


def test_get_batch_gpt_shifts_labels_and_masks_eod(corpus):
    docs, _, training, tokenizer = corpus
    train = gpt_datasets(docs, training, COUNTS)[0]
    batch = batches.get_batch_gpt(build_data_iterators((train,), MBS).train, tokenizer.eod,
                                  DataOptions(eod_mask_loss=True, reset_position_ids=True))
    text = stacked(first_micro_batch(train), "text")
    assert torch.equal(batch.tokens, text[:, :-1]) and torch.equal(batch.labels, text[:, 1:])
    assert batch.tokens.dtype == torch.int64 and batch.attention_mask is None and batch["labels"] is batch.labels
    eods = (text[:, :-1] == tokenizer.eod)
    assert eods.any(), "the sample windows should cross a document end"
    assert torch.equal(batch.loss_mask, (~eods).float())
    for row in range(MBS):   # positions count from the last EOD before them
        last = -1
        for j in range(text.shape[1] - 1):
            assert batch.position_ids[row, j] == j - last - 1
            if text[row, j] == tokenizer.eod:
                last = j


def test_a_chunk_without_iterator_gets_an_empty_batch():
    assert batches.get_batch_gpt(None, 0) == batches.GPTBatch.empty()
    assert batches.get_batch_t5(None).encoder_input_ids is None


# --- BERT, RoFormer, T5 -----------------------------------------------------------------------------------

def test_get_batch_bert_hands_the_sample_fields_to_the_model(corpus):
    _, sentences, training, tokenizer = corpus
    train = bert_datasets(sentences, training, DataOptions(wwm=True, sentence_order_prediction=True),
                          tokenizer, COUNTS)[0]
    batch = batches.get_batch_bert(build_data_iterators((train,), MBS).train)
    samples = first_micro_batch(train)
    assert torch.equal(batch.tokens, stacked(samples, "text"))
    assert torch.equal(batch.types, stacked(samples, "types"))
    assert torch.equal(batch.padding_mask, stacked(samples, "padding_mask"))
    assert torch.equal(batch.lm_labels, stacked(samples, "labels"))
    assert torch.equal(batch.loss_mask, stacked(samples, "loss_mask").float())
    assert batch.sentence_order.tolist() == [s["is_random"] for s in samples]
    assert batch.loss_mask.dtype == torch.float32 and batch.loss_mask.sum() > 0


def test_get_batch_roformer_predicts_the_next_token_on_lm_samples_and_masks_on_mlm(corpus):
    _, sentences, training, tokenizer = corpus
    options = DataOptions(roformer_lm_prob=0.5)
    train = roformer_datasets(sentences, training, options, tokenizer, COUNTS)[0]
    size = 16
    batch = batches.get_batch_roformer(build_data_iterators((train,), size).train)
    kinds = set()
    for row in range(size):
        sample = train[row]
        real = int(sample["padding_mask"].sum())
        labels, mask = np.zeros(24, dtype=np.int64), np.zeros(24)
        if train.is_lm_sample(row):
            kinds.add("lm")
            assert sample["types"][:real].tolist() == [1] * real
            for j in range(real - 1):           # token j predicts token j + 1
                labels[j], mask[j] = sample["text"][j + 1], 1
        else:
            kinds.add("mlm")
            assert sample["types"].sum() == 0
            for j in range(24):
                if sample["loss_mask"][j]:
                    labels[j], mask[j] = sample["labels"][j], 1
        assert batch.loss_mask[row].tolist() == mask.tolist(), f"row {row}"
        assert batch.labels[row][mask == 1].tolist() == labels[mask == 1].tolist(), f"row {row}"
    assert kinds == {"lm", "mlm"}


def test_roformer_lm_samples_carry_the_unmasked_text(corpus):
    _, sentences, training, tokenizer = corpus
    train = roformer_datasets(sentences, training, DataOptions(roformer_lm_prob=1.0), tokenizer, COUNTS)[0]
    bert = train.bert_dataset[3]
    original = np.where(bert["loss_mask"] == 1, bert["labels"], bert["text"])
    assert train[3]["text"].tolist() == original.tolist() and tokenizer.mask not in train[3]["text"].tolist()


def test_get_batch_t5_passes_keep_masks_and_decoder_targets(corpus):
    _, sentences, training, tokenizer = corpus
    train = t5_datasets(sentences, training, DataOptions(decoder_seq_length=12), tokenizer, COUNTS)[0]
    batch = batches.get_batch_t5(build_data_iterators((train,), MBS).train)
    samples = first_micro_batch(train)
    assert torch.equal(batch.encoder_input_ids, stacked(samples, "text_enc"))
    assert torch.equal(batch.decoder_input_ids, stacked(samples, "text_dec"))
    assert torch.equal(batch.labels, stacked(samples, "labels"))
    assert torch.equal(batch.loss_mask, stacked(samples, "loss_mask").float())
    assert torch.equal(batch.encoder_attention_mask, stacked(samples, "enc_mask").bool())
    assert torch.equal(batch.decoder_attention_mask, stacked(samples, "dec_mask").bool())
    assert torch.equal(batch.enc_dec_attention_mask, stacked(samples, "enc_dec_mask").bool())
    # the decoder reads BOS then its own targets, one step behind
    assert torch.equal(batch.decoder_input_ids[:, 1:][batch.loss_mask[:, 1:] > 0],
                       batch.labels[:, :-1][batch.loss_mask[:, 1:] > 0])


# --- Transformer-XL and finetune --------------------------------------------------------------------------

def test_get_batch_transformer_xl_shifts_labels(corpus):
    docs, _, training, tokenizer = corpus
    train = transformer_xl_datasets(docs, training, COUNTS)[0]
    batch = batches.get_batch_transformer_xl(build_data_iterators((train,), MBS).train)
    text = stacked(first_micro_batch(train), "text")
    assert torch.equal(batch.tokens, text[:, :-1]) and torch.equal(batch.labels, text[:, 1:])
    assert batch.loss_mask.tolist() == torch.ones(MBS, 24).tolist()


def test_get_batch_finetune_learns_the_text_and_eod_never_the_prompt(tmp_path):
    tokenizer = build_tokenizer_by_name("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    path = tmp_path / "pairs.jsonl"
    pairs = [("问题：天空是什么颜色？回答：", "蓝色。"), ("翻译：我喜欢读书。", "i like books.")]
    path.write_text("".join(json.dumps({"prompt": p, "text": t}, ensure_ascii=False) + "\n" for p, t in pairs),
                    encoding="utf-8")
    data = DataConfig(data_path=[str(path)], split="1")
    training = TrainingConfig(micro_batch_size=2, global_batch_size=2, seq_length=32, train_iters=1, seed=5)
    train = finetune_datasets(data, training, tokenizer, [2, 0, 0])[0]
    batch = batches.get_batch_finetune(build_data_iterators((train,), 2).train)
    for row in range(2):
        prompt, text = (tokenizer.tokenize(x) for x in pairs[train.item_of(row)])
        full = prompt + text + [tokenizer.eod]
        assert batch.tokens[row, :len(full) - 1].tolist() == full[:-1]
        # label j is full[j + 1]: learned exactly for the text tokens and the closing EOD
        expected = [1.0 if len(prompt) <= j + 1 < len(full) else 0.0 for j in range(32)]
        assert batch.loss_mask[row].tolist() == expected
        assert batch.labels[row, :len(full) - 1].tolist() == full[1:]


def test_finetune_epochs_are_each_a_fresh_permutation(corpus):
    _, _, _, tokenizer = corpus
    data = DataConfig(data_path=[FINETUNE_JSONL], split="1")
    training = TrainingConfig(seq_length=64, train_iters=1, seed=3)
    train = finetune_datasets(data, training, tokenizer, [23, 0, 0])[0]
    n = len(train.dataset)
    epochs = [[train.item_of(i) for i in range(e * n, (e + 1) * n)] for e in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs) and len(train) == 23
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
