"""Parameter groups on a real GPT model: norms and biases are not decayed, matrices and the
embedding tables are; the lr multiplier hook; and the schedule writing into the groups."""
import pytest
import torch
from torch import nn

from megatron_core import mpu
from megatron_core.models.gpt import GPTModel
from tests.harness import run_distributed
from megatron_core.training.lr_schedule import LearningRateSchedule
from megatron_core.training.param_groups import build_param_groups
from megatron_core.transformer import TransformerConfig

pytestmark = pytest.mark.quick


def _by_id(groups):
    return {id(p): group for group in groups for p in group["params"]}


def _check_gpt_groups(normalization, untied):
    mpu.initialize_model_parallel(1)
    config = TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=4, normalization=normalization,
                               share_embeddings_and_output_weights=not untied)
    model = GPTModel(config, 64, 8)
    groups = build_param_groups(model, weight_decay=0.1)
    where = _by_id(groups)
    named = dict(model.named_parameters())
    # every trainable parameter exactly once
    assert sorted(where) == sorted(id(p) for p in named.values())
    assert sum(len(g["params"]) for g in groups) == len(named)
    norm_params = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))
                   for p in m.parameters(recurse=False)}
    assert norm_params, "the model has norms"
    for name, param in named.items():
        group = where[id(param)]
        decayed = param.ndim >= 2 and id(param) not in norm_params
        assert group["wd_mult"] == (1.0 if decayed else 0.0), name
        assert group["weight_decay"] == (0.1 if decayed else 0.0), name
    # the embedding tables and the attention/MLP weights are decayed, biases and norm gains are not
    assert where[id(model.embedding.word_embeddings.weight)]["wd_mult"] == 1.0
    biases = [p for n, p in named.items() if n.endswith("bias")]
    assert biases and all(where[id(p)]["wd_mult"] == 0.0 for p in biases)
    if untied:
        assert where[id(model.output_layer.weight)]["wd_mult"] == 1.0
    # lr multiplier hook: the output side at half rate, groups split by (decay, multiplier)
    slow = build_param_groups(model, 0.1, lr_mult=lambda name, p: 0.5 if name.startswith("decoder.layers.1.") else 1.0)
    slow_where = _by_id(slow)
    for name, param in named.items():
        assert slow_where[id(param)]["lr_mult"] == (0.5 if name.startswith("decoder.layers.1.") else 1.0), name
        assert slow_where[id(param)]["wd_mult"] == where[id(param)]["wd_mult"]
    assert len(slow) == 4
    # the schedule writes rate x lr_mult and decay x wd_mult, and AdamW leaves no-decay params alone
    opt = torch.optim.AdamW(slow, lr=1.0)
    schedule = LearningRateSchedule(max_lr=1e-3, decay_steps=10, start_wd=0.1, end_wd=0.1)
    schedule.apply(opt)
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_mult"])
        assert group["weight_decay"] == pytest.approx(0.1 * group["wd_mult"])


@pytest.mark.parametrize("normalization,untied", [("LayerNorm", False), ("RMSNorm", True)])
def test_gpt_groups_exempt_norms_and_biases_from_weight_decay(normalization, untied):
    run_distributed(_check_gpt_groups, 1, normalization, untied)


def test_chunks_share_no_parameter_twice_and_frozen_parameters_are_left_out():
    shared = nn.Linear(3, 3)
    a, b = nn.Sequential(shared, nn.LayerNorm(3)), nn.Sequential(shared, nn.Linear(3, 2, bias=False))
    b[1].weight.requires_grad_(False)
    names = []
    groups = build_param_groups([a, b], 0.01, lr_mult=lambda name, p: names.append(name) or 1.0)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == 4   # shared weight+bias, norm weight+bias
    assert names == ["0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias"]
    assert all(p is not b[1].weight for p in params)
