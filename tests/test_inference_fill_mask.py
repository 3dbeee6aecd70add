"""--fill-mask: the candidates of every [MASK] are the top-k of the softmax over the MLM
logits of one bidirectional pass (BERT and RoFormer), padding rows excluded."""
import pytest
import torch

from megatron_core.inference.fill_mask import fill_mask
from megatron_core.models.bert import BertModel
from tests.harness.inference_models import PADDED, VOCAB, tiny_roformer
from megatron_core.transformer.config import TransformerConfig
from tests.harness.model_checks import single_process_world

pytestmark = pytest.mark.quick

MASK = 4


@pytest.fixture(scope="module", autouse=True)
def world():
    with single_process_world():
        yield


def _bert():
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48,
                               layernorm_position="post", hidden_dropout=0.0, attention_dropout=0.0,
                               init_method_std=0.3)
    return BertModel(config, PADDED, 32, num_tokentypes=2, add_binary_head=True).eval()


@pytest.mark.parametrize("build", [_bert, tiny_roformer], ids=["bert", "roformer"])
def test_fill_mask_lists_the_top_candidates_of_each_mask(build):
    model = build()
    inputs = [[1, 9, MASK, 12, MASK, 2], [1, 7, MASK, 2]]
    got = fill_mask(model, inputs, MASK, top_k=3, vocab_size=VOCAB)
    assert [len(masks) for masks in got] == [2, 1]
    for row, x in enumerate(inputs):
        ids = torch.tensor([x])
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids), torch.zeros_like(ids))[0][0, :, :VOCAB]
        probs = torch.softmax(logits.float(), dim=-1)
        positions = [i for i, t in enumerate(x) if t == MASK]
        for options, position in zip(got[row], positions):
            values, tokens = probs[position].topk(3)
            assert [t for t, _ in options] == tokens.tolist()
            listed = torch.tensor([p for _, p in options], dtype=torch.float64)
            torch.testing.assert_close(listed, values.double(), rtol=1e-5, atol=1e-6)
