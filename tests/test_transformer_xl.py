"""Transformer-XL equals a plain reference written here (loops over query/key pairs, the
sinusoid of each distance computed directly, no rel-shift, no parallel layers) over 3
consecutive segments with memory; counts its parameters and FLOPs; and gives the TP=1
loss and gradients at TP=2 over 3 segments (one gloo spawn)."""
import math

import pytest
import torch
import torch.nn.functional as F

from megatron_core import mpu
from megatron_core.models.relative_attention import rel_shift
from megatron_core.models.transformer_xl import (TransformerXLModel, from_chinese_txl_state_dict,
                                                to_chinese_txl_state_dict, transformer_xl_forward_flops)
from tests.harness import run_distributed
from megatron_core.transformer import ConfigError, TransformerConfig
from tests.harness.model_checks import gathered_grads, single_process_world

VOCAB, B, SEG, MEM, H, HEADS = 64, 2, 4, 6, 16, 4
TOL = dict(rtol=1e-4, atol=1e-4)

CASES = {
    # Chinese-Transformer-XL: LayerNorm, biases, gelu (tanh), shared r_w/r_r, tied output.
    "chinese_txl": (dict(), dict(untie_r=False)),
    # Per-layer r_w/r_r, untied output, RMSNorm, no biases, swiglu.
    "untied_rmsnorm_swiglu": (dict(normalization="RMSNorm", add_bias_linear=False, activation="swiglu",
                                   share_embeddings_and_output_weights=False, ffn_hidden_size=24),
                              dict(untie_r=True)),
}


def _config(overrides, tp=1):
    values = dict(num_layers=2, hidden_size=H, num_attention_heads=HEADS, ffn_hidden_size=32,
                  position_embedding_type="relative_xl", activation="gelu_tanh", hidden_dropout=0.0,
                  attention_dropout=0.0, init_seed=9, make_vocab_size_divisible_by=1,
                  tensor_model_parallel_size=tp)
    values.update(overrides)
    return TransformerConfig(**values)


@pytest.fixture(scope="module")
def single_rank():
    with single_process_world():
        yield


def _randomize(model, tp=1):
    """Every parameter gets serial random values (TP ranks take their shard), so the zero-
    initialised r_w/r_r biases, norm weights and biases all matter."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            parallel = getattr(p, "tensor_model_parallel", False)
            full_shape = list(p.shape)
            if parallel:
                full_shape[p.partition_dim] *= tp
            seed = sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 100003
            full = torch.randn(full_shape, generator=torch.Generator().manual_seed(seed)) * 0.3
            if name.endswith("layernorm.weight"):
                full += 1.0
            if parallel and tp > 1:
                full = mpu.shard_tensor(full, p.partition_dim, mpu.get_tensor_model_parallel_rank(), tp,
                                        getattr(p, "partition_stride", 1))
            p.copy_(full)


def _segments(seed=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (B, SEG), generator=g), torch.randint(0, VOCAB, (B, SEG), generator=g))
            for _ in range(3)]


# --- the reference ------------------------------------------------------------------------------------------
def _norm(x, w, b, config):
    if config.normalization == "LayerNorm":
        return F.layer_norm(x, (x.shape[-1],), w, b, config.layernorm_epsilon)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.layernorm_epsilon) * w


def _act(x, config):
    if config.activation == "swiglu":
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _sinusoid(distance, h):
    freqs = torch.tensor([10000 ** (-j / h) for j in range(0, h, 2)])
    return torch.cat([torch.sin(distance * freqs), torch.cos(distance * freqs)])


def reference(state, config, untie_r, ids, mems):
    """Batch-first [b, s, h] Transformer-XL from the state dict, mems [b, m, h] per layer."""
    get = lambda key: state.get(key)
    n, d, h = config.num_attention_heads, config.kv_channels, config.hidden_size
    emb = state["embedding.word_embeddings.weight"]
    x = emb[ids]
    s = ids.shape[1]
    new_mems = []
    for layer in range(config.num_layers):
        pre = f"layers.{layer}."
        mem = mems[layer] if mems else x[:, :0]
        new_mems.append(torch.cat([mem, x], dim=1)[:, -MEM:])
        m = mem.shape[1]
        w = lambda k: get(pre + k)
        normed = _norm(torch.cat([mem, x], dim=1), w("input_layernorm.weight"), w("input_layernorm.bias"), config)
        qkv_w = w("self_attention.query_key_value.weight").view(n, 3, d, h)
        qkv_b = w("self_attention.query_key_value.bias")
        qkv_b = qkv_b.view(n, 3, d) if qkv_b is not None else torch.zeros(n, 3, d)
        r_w = w("self_attention.relative.weight").view(n, d, h)
        r_b = w("self_attention.relative.bias")
        r_b = r_b.view(n, d) if r_b is not None else torch.zeros(n, d)
        u = w("self_attention.r_w_bias") if untie_r else state["r_w_bias"]
        v = w("self_attention.r_r_bias") if untie_r else state["r_r_bias"]
        context = torch.zeros(x.shape[0], s, n, d)
        for bi in range(x.shape[0]):
            for a in range(n):
                q = normed[bi, m:] @ qkv_w[a, 0].T + qkv_b[a, 0]
                k = normed[bi] @ qkv_w[a, 1].T + qkv_b[a, 1]
                val = normed[bi] @ qkv_w[a, 2].T + qkv_b[a, 2]
                for i in range(s):
                    scores = []
                    for j in range(m + s):
                        distance = m + i - j
                        if distance < 0:
                            scores.append(torch.tensor(-float("inf")))
                            continue
                        r = r_w[a] @ _sinusoid(float(distance), h) + r_b[a]
                        scores.append(((q[i] + u[a]) @ k[j] + (q[i] + v[a]) @ r) / math.sqrt(d))
                    probs = torch.softmax(torch.stack(scores), dim=0)
                    context[bi, i, a] = probs @ val
        attn = context.reshape(x.shape[0], s, n * d) @ w("self_attention.dense.weight").T
        if w("self_attention.dense.bias") is not None:
            attn = attn + w("self_attention.dense.bias")
        x = x + attn
        y = _norm(x, w("post_attention_layernorm.weight"), w("post_attention_layernorm.bias"), config)
        y = y @ w("mlp.dense_h_to_4h.weight").T
        if w("mlp.dense_h_to_4h.bias") is not None:
            y = y + w("mlp.dense_h_to_4h.bias")
        y = _act(y, config) @ w("mlp.dense_4h_to_h.weight").T
        if w("mlp.dense_4h_to_h.bias") is not None:
            y = y + w("mlp.dense_4h_to_h.bias")
        x = x + y
    x = _norm(x, state["final_layernorm.weight"], state.get("final_layernorm.bias"), config)
    out = state.get("output_layer.weight", emb)
    return x @ out.T, new_mems


@pytest.mark.parametrize("case", sorted(CASES))
def test_three_segments_match_reference(single_rank, case):
    config_overrides, model_kwargs = CASES[case]
    config = _config(config_overrides)
    model = TransformerXLModel(config, VOCAB, mem_length=MEM, **model_kwargs).eval()
    _randomize(model)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    mems, ref_mems = None, None
    for index, (ids, labels) in enumerate(_segments()):
        with torch.no_grad():
            logits, new_mems = model(ids, mems)
            loss, same_mems = model(ids, mems, labels=labels)
        expected, ref_new = reference(state, config, model_kwargs["untie_r"], ids, ref_mems)
        torch.testing.assert_close(logits, expected, **TOL, msg=lambda m: f"segment {index} logits: {m}")
        torch.testing.assert_close(loss, F.cross_entropy(expected.transpose(1, 2), labels, reduction="none"), **TOL)
        assert len(new_mems) == config.num_layers
        assert new_mems[0].shape == (min(MEM, SEG * (index + 1)), B, H)
        for ours, ref in zip(new_mems, ref_new):
            torch.testing.assert_close(ours.transpose(0, 1), ref, **TOL)
            assert not ours.requires_grad
        mems, ref_mems = new_mems, ref_new


def test_rel_shift_aligns_distances():
    q, m = 3, 4
    k = q + m
    # raw[i, c] = distance held by column c (k-1-c); after the shift column j must hold m+i-j.
    raw = torch.arange(k - 1, -1, -1).float().expand(q, k).clone()
    shifted = rel_shift(raw)
    for i in range(q):
        for j in range(m + i + 1):
            assert shifted[i, j] == m + i - j


def test_mems_are_the_layer_inputs_and_detached(single_rank):
    config = _config({})
    model = TransformerXLModel(config, VOCAB, mem_length=MEM)
    ids = _segments()[0][0]
    captured = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
             for layer in model.layers]
    _, mems = model(ids)
    for hook in hooks:
        hook.remove()
    for mem, inp in zip(mems, captured):
        assert torch.equal(mem, inp[-MEM:])
    _, none = TransformerXLModel(config, VOCAB, mem_length=0)(ids)
    assert none == []


def test_evaluation_scope_keeps_training_memory_and_continues_its_own(single_rank):
    model = TransformerXLModel(_config({}), VOCAB, mem_length=MEM)
    model.set_current_microbatch(0)
    segments = [ids for segment in _segments() for ids in segment]
    model(segments[0], use_memory=True)
    training = model.memory.read(0)
    with model.evaluation_scope():
        assert model.memory.read(0) is None              # validation's own stream starts empty
        model(segments[1], use_memory=True)
        first_validation = model.memory.read(0)
    assert model.memory.read(0) is training              # training's mems, untouched
    with model.evaluation_scope():
        assert model.memory.read(0) is first_validation  # the next evaluation continues its stream
    _, expected = model(segments[2], list(training))
    model(segments[2], use_memory=True)                  # training goes on from its own mems
    assert all(torch.equal(got, want) for got, want in zip(model.memory.read(0), expected))


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameter_count_and_flops(single_rank, case):
    from torch.utils.flop_counter import FlopCounterMode
    config_overrides, model_kwargs = CASES[case]
    config = _config(config_overrides)
    model = TransformerXLModel(config, VOCAB, mem_length=MEM, **model_kwargs)
    assert model.parameter_count() == sum(p.numel() for p in model.parameters())
    (ids, labels), (ids2, labels2) = _segments()[:2]
    _, mems = model(ids)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = model(ids2, mems, labels=labels2)
        loss.sum().backward()
    k = SEG + SEG  # memory of the first segment + this one
    forward = transformer_xl_forward_flops(config, VOCAB, SEG, SEG, B)
    # The counter sees backward = 2 x forward for every matmul except the relative
    # projection of the (constant) position embeddings: its input needs no gradient.
    relative = config.num_layers * 2 * k * H * H
    assert counter.get_total_flops() == 3 * forward - relative
    assert model.training_flops_per_token(SEG, SEG, B) == 3 * forward // (B * SEG)


def test_chinese_txl_checkpoint_mapping(single_rank):
    """Names and layout of Chinese-Transformer-XL's GPT2ParallelTransformer (--transformer-xl):
    its query_key_value is [q | k | v]; a round trip is the identity."""
    config = _config({})
    model = TransformerXLModel(config, VOCAB, mem_length=MEM)
    _randomize(model)
    ours = model.state_dict()
    theirs = to_chinese_txl_state_dict(ours, config)
    per_layer = [f"{m}.{k}" for m in ("input_layernorm", "attention.query_key_value", "attention.relative",
                                      "attention.dense", "post_attention_layernorm", "mlp.dense_h_to_4h",
                                      "mlp.dense_4h_to_h") for k in ("weight", "bias")]
    expected = {"word_embeddings.weight", "transformer.r_w_bias", "transformer.r_r_bias",
                "transformer.position_embeddings.inv_freq", "transformer.final_layernorm.weight",
                "transformer.final_layernorm.bias"}
    expected |= {f"transformer.layers.{i}.{k}" for i in range(config.num_layers) for k in per_layer}
    assert set(theirs) == expected
    back = from_chinese_txl_state_dict(theirs, config)
    assert set(back) == set(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    # Their rows [0:h] are the queries of heads 0..n-1 in order, [h:2h] the keys, [2h:3h] the values.
    x = torch.randn(5, 1, H)
    mixed, _ = model.layers[0].self_attention.query_key_value(x)
    q, k, v = mixed.view(5, 1, HEADS, -1).split(H // HEADS, dim=-1)
    w, b = theirs["transformer.layers.0.attention.query_key_value.weight"], \
        theirs["transformer.layers.0.attention.query_key_value.bias"]
    for index, part in enumerate((q, k, v)):
        rows = slice(index * H, (index + 1) * H)
        torch.testing.assert_close(x @ w[rows].T + b[rows], part.reshape(5, 1, H), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="shared r_w/r_r"):
        to_chinese_txl_state_dict(ours, config, untie_r=True)


def test_bad_configurations_get_one_sentence(single_rank):
    with pytest.raises(ConfigError, match="relative_xl"):
        TransformerXLModel(_config(dict(position_embedding_type="rope")), VOCAB, MEM)
    with pytest.raises(ConfigError, match="pre-LN"):
        TransformerXLModel(_config(dict(layernorm_position="post")), VOCAB, MEM)
    with pytest.raises(ConfigError, match="grouped-query"):
        TransformerXLModel(_config(dict(num_query_groups=2)), VOCAB, MEM)
    model = TransformerXLModel(_config({}), VOCAB, MEM)
    ids = _segments()[0][0]
    with pytest.raises(ValueError, match="mems"):
        model(ids, [torch.zeros(2, B, H)])


# --- TP=2 equals TP=1 over 3 segments (one spawn) -----------------------------------------------------------------
def _run(case, tp):
    config_overrides, model_kwargs = CASES[case]
    model = TransformerXLModel(_config(config_overrides, tp), VOCAB, mem_length=MEM, **model_kwargs)
    _randomize(model, tp)
    mems, losses = None, []
    for ids, labels in _segments():
        loss, mems = model(ids, mems, labels=labels)
        loss.sum().backward()
        losses.append(loss.detach())
    return torch.stack(losses), gathered_grads(model, tp)


def _check_tp2():
    mpu.initialize_model_parallel(1)
    serial = {case: _run(case, 1) for case in CASES}
    mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(2)
    for case in CASES:
        losses, grads = _run(case, 2)
        ref_losses, ref_grads = serial[case]
        torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-5, msg=lambda m: f"{case} losses: {m}")
        assert set(grads) == set(ref_grads)
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{case} grad {name}: {m}")


def test_tp2_equals_tp1():
    run_distributed(_check_tp2, 2)
