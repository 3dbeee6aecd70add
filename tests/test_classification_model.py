"""Megatron's classification and multiple-choice heads (models/classification.py) equal HF's
BertForSequenceClassification / MegatronBertForSequenceClassification / ...ForMultipleChoice
with the same weights (fp32, eval), the weights mapped both ways by models/hf/classification.py;
at TP=2 the logits and the gradients are TP=1's."""
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from megatron_core import mpu  # noqa: E402
from megatron_core.models.classification import ClassificationModel  # noqa: E402
from megatron_core.models.hf import bert as hf_bert  # noqa: E402
from megatron_core.models.hf import classification as hf_classification  # noqa: E402
from megatron_core.models.hf import megatron_bert as hf_megatron_bert  # noqa: E402
from megatron_core.transformer import ConfigError  # noqa: E402
from megatron_core.transformer.config import TransformerConfig  # noqa: E402
from tests.harness.distributed import run_distributed  # noqa: E402
from tests.harness.model_checks import single_process_world  # noqa: E402
from tests.harness.weights import randomize_trainable  # noqa: E402

pytestmark = pytest.mark.quick

TOL = dict(rtol=1e-5, atol=1e-5)
VOCAB, MAX_POS, B, S, CLASSES = 96, 24, 3, 11, 5
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2,
             max_position_embeddings=MAX_POS, attn_implementation="eager")
FAMILIES = {"bert": (transformers.BertConfig, hf_bert, "Bert"),
            "megatron_bert": (transformers.MegatronBertConfig, hf_megatron_bert, "MegatronBert")}


def _inputs(seed=3, shape=(B, S)):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, shape, generator=gen)
    types = torch.zeros(shape, dtype=torch.long)
    types[..., 6:] = 1
    padding = torch.ones(shape, dtype=torch.long)
    padding[..., 1, 8:] = 0
    return ids, types, padding


def _hf_model(family: str, multiple_choice: bool):
    config_cls, _, prefix = FAMILIES[family]
    kind = "ForMultipleChoice" if multiple_choice else "ForSequenceClassification"
    cls = getattr(transformers, prefix + kind)
    torch.manual_seed(0)
    return randomize_trainable(cls(config_cls(**SMALL, num_labels=CLASSES)), seed=1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("multiple_choice", [False, True])
def test_classifier_equals_hf_and_maps_back(family, multiple_choice):
    hf = _hf_model(family, multiple_choice)
    converter = FAMILIES[family][1]
    config = converter.from_hf_config(hf.config)
    classes = 1 if multiple_choice else CLASSES
    assert hf_classification.hf_architecture(config, multiple_choice) == type(hf).__name__
    with single_process_world():
        ours = ClassificationModel(config, VOCAB, MAX_POS, num_classes=classes, multiple_choice=multiple_choice)
        ours.eval()
        ours.load_state_dict(hf_classification.from_hf_state_dict(hf.state_dict(), config), strict=True)
        ids, types, padding = _inputs(shape=(B, 4, S) if multiple_choice else (B, S))
        labels = torch.tensor([0, 3, 1]) if multiple_choice else torch.tensor([0, 4, 2])
        with torch.no_grad():
            ref = hf(input_ids=ids, token_type_ids=types, attention_mask=padding, labels=labels)
            logits = ours(ids, padding, types)
        torch.testing.assert_close(logits, ref.logits, **TOL)
        torch.testing.assert_close(F.cross_entropy(logits, labels), ref.loss, **TOL)
        back = hf_classification.to_hf_state_dict(ours.state_dict(), config)
    missing, unexpected = hf.load_state_dict(back, strict=False)
    assert not unexpected and all("position_ids" in key for key in missing)
    assert all(torch.equal(back[k], v) for k, v in hf.state_dict().items() if k in back)


def test_a_multiple_choice_head_has_one_logit_per_choice():
    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4)
    with single_process_world(), pytest.raises(ConfigError, match="one logit"):
        ClassificationModel(config, VOCAB, num_classes=4, multiple_choice=True)


def _tp_logits_and_grads(tp: int, out: str):
    mpu.initialize_model_parallel(tensor_model_parallel_size=tp)
    try:
        config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                                   hidden_dropout=0.0, attention_dropout=0.0, tensor_model_parallel_size=tp,
                                   init_seed=5)
        model = ClassificationModel(config, VOCAB, MAX_POS, num_classes=CLASSES)
        ids, types, padding = _inputs()
        logits = model(ids, padding, types)
        F.cross_entropy(logits, torch.tensor([0, 4, 2])).backward()
        head = {name: p.grad.clone() for name, p in model.named_parameters()
                if name.startswith(("classification_head", "pooler"))}
        if torch.distributed.get_rank() == 0:
            torch.save({"logits": logits.detach(), "grads": head}, out)
    finally:
        mpu.destroy_model_parallel()


def test_tensor_parallel_classifier_equals_tp1(tmp_path):
    results = {}
    for tp in (1, 2):
        out = str(tmp_path / f"tp{tp}.pt")
        run_distributed(_tp_logits_and_grads, tp, tp, out)
        results[tp] = torch.load(out)
    torch.testing.assert_close(results[2]["logits"], results[1]["logits"], **TOL)
    for name, grad in results[1]["grads"].items():
        torch.testing.assert_close(results[2]["grads"][name], grad, **TOL)
