"""BERT WordPiece decoding gives Chinese text back without the spaces between characters
that HF's and Megatron's decoders leave (what generate_text and fill-mask print)."""
import json
import os

import pytest

from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.data.tokenizers.bert_wordpiece import join_cjk

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
BERT_VOCAB = os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)


def test_news_paragraphs_decode_to_their_own_text(tokenizer):
    """The real People's Daily paragraphs (ideographs, full-width digits and punctuation)
    read back as written, lowercased; those holding an [UNK] (this vocabulary lacks
    — and “) cannot."""
    with open(os.path.join(DATA, "zh_news_200.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    unk = tokenizer.vocab["[UNK]"]
    checked = [t for t in texts if unk not in tokenizer.tokenize(t)]
    assert len(checked) >= 140
    wrong = [t for t in checked if tokenizer.detokenize(tokenizer.tokenize(t)) != t.lower()]
    assert wrong == []


def test_mixed_text_keeps_the_spaces_between_latin_words(tokenizer):
    def round_trip(text):
        return tokenizer.detokenize(tokenizer.tokenize(text))

    assert round_trip("中文与English混合，100％正确！") == "中文与english混合，100％正确！"
    assert round_trip("北京是中国的首都, hello world!") == "北京是中国的首都, hello world!"
    assert round_trip("１９９８年新年讲话《迈向新世纪》。") == "１９９８年新年讲话《迈向新世纪》。"
    assert round_trip("北京是中国的[MASK]都。") == "北京是中国的[MASK]都。"
    assert round_trip("unaffable words stay apart") == "unaffable words stay apart"


def test_only_spaces_differ_from_transformers_bert_decoder(tokenizer, tmp_path):
    """Same characters as BertTokenizerFast.decode; the spaces it puts between CJK characters are gone."""
    import shutil
    from transformers import BertTokenizerFast

    shutil.copy(BERT_VOCAB, tmp_path / "vocab.txt")
    reference = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    for text in ["清华大学位于北京。", "我爱 playing football", "１２月３１日，江泽民发表讲话"]:
        ids = tokenizer.tokenize(text)
        theirs, ours = reference.decode(ids), tokenizer.detokenize(ids)
        assert "清 华" in theirs or "我 爱" in theirs or "１２ 月" in theirs
        assert ours.replace(" ", "") == theirs.replace(" ", "")
        assert ours == join_cjk(theirs)
    assert tokenizer.detokenize(tokenizer.tokenize("清华大学位于北京。")) == "清华大学位于北京。"
