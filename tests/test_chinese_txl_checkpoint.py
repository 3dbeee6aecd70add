"""Chinese-Transformer-XL's checkpoint files convert to ours and keep their model's logits.

The fixture writes a tiny checkpoint exactly in their format (THUDM/Chinese-Transformer-XL:
DeepSpeed model-states files under <dir>/<iteration>/ with latest_checkpointed_iteration.txt,
their `module` key names, fp16 tensors, TP=2 shards cut as their mpu cuts them: query_key_value
with stride 3, column-parallel rows, row-parallel columns, r_w_bias / r_r_bias by heads, and
their client state with Python, numpy and torch RNG states). The reference is a plain-torch
transcription of their forward (mpu/transformer.py GPT2ParallelTransformer with relative
encoding, model/gpt2_modeling.py's tied output) on the full weights, independent of our
model code. convert_checkpoint.py --from-ctxl writes our checkpoint at TP=1 and TP=2; our
TransformerXLModel built from it gives the reference logits, and a pickle payload in their
file is refused with nothing run.
"""
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_core.errors import CheckpointError
from megatron_core.models.transformer_xl import TransformerXLModel
from tests.harness.tool_main import run_tool_main
from megatron_core.checkpoint.saved_model import open_saved_model
from megatron_core.transformer import TransformerConfig
from tests.harness.model_checks import single_process_world

pytestmark = pytest.mark.quick

LAYERS, HIDDEN, HEADS, VOCAB_ROWS, TP, ITERATION = 2, 16, 4, 64, 2, 1000
D = HIDDEN // HEADS


def convert(*flags):
    """tools/convert_checkpoint.py's main in this process."""
    run_tool_main("convert_checkpoint.py", *flags)


def their_full_module(seed=0):
    """Their GPT2Model(relative_encoding=True) state dict at TP=1, random (biases and r_*_bias too)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    module = {"word_embeddings.weight": rand(VOCAB_ROWS, HIDDEN, scale=0.5),
              "transformer.r_w_bias": rand(HEADS, D), "transformer.r_r_bias": rand(HEADS, D),
              "transformer.position_embeddings.inv_freq": 1 / (10000 ** (torch.arange(0.0, HIDDEN, 2.0) / HIDDEN))}
    for i in range(LAYERS):
        p = f"transformer.layers.{i}."
        module.update({
            p + "input_layernorm.weight": 1 + rand(HIDDEN), p + "input_layernorm.bias": rand(HIDDEN),
            p + "attention.query_key_value.weight": rand(3 * HIDDEN, HIDDEN),
            p + "attention.query_key_value.bias": rand(3 * HIDDEN),
            p + "attention.relative.weight": rand(HIDDEN, HIDDEN), p + "attention.relative.bias": rand(HIDDEN),
            p + "attention.dense.weight": rand(HIDDEN, HIDDEN), p + "attention.dense.bias": rand(HIDDEN),
            p + "post_attention_layernorm.weight": 1 + rand(HIDDEN), p + "post_attention_layernorm.bias": rand(HIDDEN),
            p + "mlp.dense_h_to_4h.weight": rand(4 * HIDDEN, HIDDEN), p + "mlp.dense_h_to_4h.bias": rand(4 * HIDDEN),
            p + "mlp.dense_4h_to_h.weight": rand(HIDDEN, 4 * HIDDEN), p + "mlp.dense_4h_to_h.bias": rand(HIDDEN),
        })
    module.update({"transformer.final_layernorm.weight": 1 + rand(HIDDEN),
                   "transformer.final_layernorm.bias": rand(HIDDEN)})
    return {k: v.half() for k, v in module.items()}   # the released model is fp16


def their_shard(full, rank, size):
    """Rank `rank`'s `module` as their mpu splits it (written out here, not taken from our code)."""
    shard = {}
    for key, value in full.items():
        if key.endswith("attention.query_key_value.weight") or key.endswith("attention.query_key_value.bias"):
            q, k, v = value.chunk(3, dim=0)   # full layout [q | k | v]; each rank [q_r | k_r | v_r]
            shard[key] = torch.cat([part.chunk(size, dim=0)[rank] for part in (q, k, v)]).clone()
        elif key == "word_embeddings.weight" or key.endswith(("r_w_bias", "r_r_bias", "attention.relative.weight",
                                                               "attention.relative.bias", "dense_h_to_4h.weight",
                                                               "dense_h_to_4h.bias")):
            shard[key] = value.chunk(size, dim=0)[rank].clone()
        elif key.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
            shard[key] = value.chunk(size, dim=1)[rank].clone()
        else:
            shard[key] = value.clone()
    return shard


def write_their_checkpoint(directory, full, extra=None):
    """<directory>/<ITERATION>/mp_rank_XX_model_states.pt as DeepSpeed's engine and their utils.py write them."""
    os.makedirs(os.path.join(directory, str(ITERATION)))
    for rank in range(TP):
        state = {"module": their_shard(full, rank, TP), "buffer_names": ["transformer.position_embeddings.inv_freq"],
                 "optimizer": None, "lr_scheduler": None, "csr_tensor_module_names": set(), "skipped_steps": 3,
                 "global_steps": ITERATION, "global_samples": ITERATION * 8, "dp_world_size": 1,
                 "mp_world_size": TP, "ds_config": {"train_micro_batch_size_per_gpu": 8, "fp16": {"enabled": True}},
                 "ds_version": "0.3.10", "iteration": ITERATION,
                 "client_lr_scheduler": {"start_lr": 1e-4, "num_iters": ITERATION, "decay_style": "cosine"},
                 "random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                 "torch_rng_state": torch.get_rng_state(), "cuda_rng_state": torch.ByteTensor(16),
                 "rng_tracker_states": {"model-parallel-rng": torch.get_rng_state()}}
        state.update(extra or {})
        torch.save(state, os.path.join(directory, str(ITERATION), f"mp_rank_{rank:02d}_model_states.pt"))
    with open(os.path.join(directory, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(ITERATION))


def reference_logits(module, tokens):
    """Their forward, one segment without memory, transcribed in plain torch ([b, s, h] throughout)."""
    w = {k: v.float() for k, v in module.items()}
    b, s = tokens.shape
    x = w["word_embeddings.weight"][tokens]
    distances = torch.arange(s - 1, -1, -1.0)
    angles = torch.outer(distances, w["transformer.position_embeddings.inv_freq"])
    pos = torch.cat([angles.sin(), angles.cos()], dim=-1)[None]                   # [1, k, h]
    mask = torch.tril(torch.ones(s, s))[None, None]                              # their ltor mask

    def heads(t):
        return t.view(t.shape[0], t.shape[1], HEADS, D).permute(0, 2, 1, 3)

    def rel_shift(t):
        padded = torch.cat([t.new_zeros(*t.shape[:-1], 1), t], dim=-1)
        return padded.view(*t.shape[:-2], t.shape[-1] + 1, t.shape[-2])[:, :, 1:].reshape(t.shape)

    def gelu(t):
        return 0.5 * t * (1.0 + torch.tanh(0.7978845608028654 * t * (1.0 + 0.044715 * t * t)))

    for i in range(LAYERS):
        p = f"transformer.layers.{i}."
        h = F.layer_norm(x, (HIDDEN,), w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], 1e-5)
        q, k, v = F.linear(h, w[p + "attention.query_key_value.weight"],
                           w[p + "attention.query_key_value.bias"]).chunk(3, dim=-1)
        q, k, v = heads(q), heads(k), heads(v)
        r = heads(F.linear(pos, w[p + "attention.relative.weight"], w[p + "attention.relative.bias"]))
        ac = (q + w["transformer.r_w_bias"].unsqueeze(1)) @ k.transpose(-1, -2)
        bd = rel_shift((q + w["transformer.r_r_bias"].unsqueeze(1)) @ r.transpose(-1, -2))
        scores = (ac + bd) / math.sqrt(D)
        scores = scores * mask - 10000.0 * (1.0 - mask)
        context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, s, HIDDEN)
        x = x + F.linear(context, w[p + "attention.dense.weight"], w[p + "attention.dense.bias"])
        h = F.layer_norm(x, (HIDDEN,), w[p + "post_attention_layernorm.weight"],
                         w[p + "post_attention_layernorm.bias"], 1e-5)
        h = gelu(F.linear(h, w[p + "mlp.dense_h_to_4h.weight"], w[p + "mlp.dense_h_to_4h.bias"]))
        x = x + F.linear(h, w[p + "mlp.dense_4h_to_h.weight"], w[p + "mlp.dense_4h_to_h.bias"])
    x = F.layer_norm(x, (HIDDEN,), w["transformer.final_layernorm.weight"], w["transformer.final_layernorm.bias"], 1e-5)
    return x @ w["word_embeddings.weight"].t()


def our_logits(checkpoint, tokens):
    saved = open_saved_model(str(checkpoint))
    config = TransformerConfig.from_dict(saved.model_config).replace(tensor_model_parallel_size=1)
    with single_process_world():
        model = TransformerXLModel(config, saved.padded_vocab_size, 0).eval()
        model.load_state_dict(dict(saved.state), strict=True)
        with torch.no_grad():
            logits, _ = model(tokens)
    return logits


@pytest.mark.parametrize("tp", [1, 2])
def test_chinese_txl_checkpoint_converts_with_its_logits(tmp_path, tp):
    full = their_full_module()
    write_their_checkpoint(tmp_path / "ctxl", full)
    convert("--from-ctxl", tmp_path / "ctxl", "--output", tmp_path / "ours", "--tensor-model-parallel-size", tp)
    saved = open_saved_model(str(tmp_path / "ours"))
    assert (saved.tensor_model_parallel_size, saved.padded_vocab_size) == (tp, VOCAB_ROWS)
    assert saved.record["model_family"] == "transformer_xl" and saved.args["openai_gelu"] is True
    config = TransformerConfig.from_dict(saved.model_config)
    assert (config.num_layers, config.hidden_size, config.num_attention_heads, config.ffn_hidden_size) == \
        (LAYERS, HIDDEN, HEADS, 4 * HIDDEN)
    tokens = torch.randint(0, VOCAB_ROWS, (2, 7), generator=torch.Generator().manual_seed(1))
    expected = reference_logits(full, tokens)
    torch.testing.assert_close(our_logits(tmp_path / "ours", tokens), expected, rtol=1e-4, atol=1e-4)


def test_the_reference_sees_the_stride_3_split(tmp_path):
    """Merging query_key_value as plain halves (not stride 3) would scramble heads: the fixture
    and the reference are strict enough to tell."""
    full = their_full_module()
    shards = [their_shard(full, r, TP) for r in range(TP)]
    key = "transformer.layers.0.attention.query_key_value.weight"
    wrong = dict(full, **{key: torch.cat([s[key] for s in shards])})
    tokens = torch.randint(0, VOCAB_ROWS, (2, 7), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(reference_logits(wrong, tokens), reference_logits(full, tokens), atol=1e-3)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_in_their_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    write_their_checkpoint(tmp_path / "ctxl", their_full_module(), extra={"client_state": _Payload(marker)})
    with pytest.raises(CheckpointError, match="pickle payload that safe loading refuses"):
        convert("--from-ctxl", tmp_path / "ctxl", "--output", tmp_path / "ours")
    assert not marker.exists() and not os.path.exists(tmp_path / "ours")


def test_megatron_args_namespace_loads_only_when_allowed(tmp_path):
    import argparse
    from megatron_core.checkpoint.file_io import load_file
    path = tmp_path / "model_optim_rng.pt"
    torch.save({"args": argparse.Namespace(num_layers=2, hidden_size=16), "iteration": 3}, path)
    assert load_file(str(path), allow_namespace=True)["args"].num_layers == 2
    with pytest.raises(CheckpointError, match="pickle payload"):
        load_file(str(path))
