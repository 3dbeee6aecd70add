"""--split-sentences: Chinese and English sentence ends, and what must not end a sentence."""
import pytest

from megatron_core.data.text_splitting import split_sentences

pytestmark = pytest.mark.quick


@pytest.mark.parametrize("text, sentences", [
    ("今天下雨了。我们去哪里？去公园吧！", ["今天下雨了。", "我们去哪里？", "去公园吧！"]),
    ("真的吗？！我不信……他走了。", ["真的吗？！", "我不信……", "他走了。"]),
    ("他说：“好。”然后走了", ["他说：“好。”", "然后走了"]),
    ("第一句；第二句", ["第一句；", "第二句"]),
    ("He left. She stayed! Why? Fine.", ["He left.", "She stayed!", "Why?", "Fine."]),
    ("Mr. Smith went to Washington. He met Dr. Jones!", ["Mr. Smith went to Washington.", "He met Dr. Jones!"]),
    ("Pi is 3.14. See https://x.y/z.html now.", ["Pi is 3.14.", "See https://x.y/z.html now."]),
    ("J. Smith arrived. The U.S. economy grew.", ["J. Smith arrived.", "The U.S. economy grew."]),
    ("Hello.World is one", ["Hello.World is one"]),
    ("line one\nline two", ["line one", "line two"]),
    ('She said "Go." Then left.', ['She said "Go."', "Then left."]),
    ("  空白  。  ", ["空白  。"]),
    ("", []),
])
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_joining_loses_only_whitespace():
    text = "１２月３１日，江泽民发表讲话。（新华社记者摄）He said: no. OK? 好！"
    assert "".join(split_sentences(text)).replace(" ", "") == text.replace(" ", "")
