"""A tiny GPT and its data for backend and loop tests: built per pipeline stage, in any
dtype, with every stage holding exactly the serial model's weights (per-component seeds)."""
from __future__ import annotations

import torch

from megatron_core.models.gpt import GPTModel, masked_mean
from megatron_core.mpu import parallel_state as ps
from megatron_core.pipeline.p2p import P2PConfig
from megatron_core.transformer.config import TransformerConfig

VOCAB, SEQ, MICRO, HIDDEN = 64, 8, 2, 16


def tiny_gpt(tp: int = 1, stage=None, dtype=torch.float32, sequence_parallel: bool = False,
             num_layers: int = 2) -> GPTModel:
    config = TransformerConfig(num_layers=num_layers, hidden_size=HIDDEN, num_attention_heads=4,
                               hidden_dropout=0.0, attention_dropout=0.0, tensor_model_parallel_size=tp,
                               sequence_parallel=sequence_parallel, params_dtype=dtype)
    return GPTModel(config, VOCAB, SEQ, stage=stage)


def global_batches(steps: int, microbatches: int, seed: int = 7) -> list:
    """`steps` global batches of `microbatches` micro-batches of MICRO sequences each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        batch = []
        for _ in range(microbatches):
            tokens = torch.randint(0, VOCAB, (MICRO, SEQ + 1), generator=g)
            mask = (torch.rand(MICRO, SEQ, generator=g) > 0.2).float()
            batch.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": mask})
        out.append(batch)
    return out


def gpt_step(model, batch):
    """Loss on the last stage, the hidden states elsewhere."""
    out = model(batch["tokens"], labels=batch["labels"])
    if not model.post_process:
        return out
    return masked_mean(out, batch["loss_mask"])


def p2p_config(tp: int = 1, sequence_parallel: bool = False, dtype=torch.float32):
    """The stage-to-stage tensor of tiny_gpt (None without pipelining)."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return None
    seq = SEQ // tp if sequence_parallel else SEQ
    return P2PConfig(tensor_shape=(seq, MICRO, HIDDEN), dtype=dtype)
