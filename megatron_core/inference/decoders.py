"""One decoding step per model family, as the generation loop (generation.py) calls it.

    decoder.begin(tokens, keep)                   -> (tokens, keep) the cache starts from
    decoder.step(tokens, positions, keep, context) -> vocab-parallel logits [b, s, V/tp]
                                                    (None on a pipeline stage without the head)

`tokens` [b, s] are the step's new tokens (the whole prompt first, then one at a time),
`positions` their position ids, `keep` [b, end] marks the real tokens among every
position so far (False: left padding) and `context` is the KV cache (kv_cache.py).

  CausalLMDecoder    GPT and Llama-style GPTModel (any TP x PP: the stage's input comes
                     from the previous stage through p2p, one pass per step)
  RoFormerLMDecoder  RoFormer in LM mode: every token has token type 1, so the model's own
                     unified mask is causal (Zhouwenwang's generation)
  T5Decoder          the prompt goes through the encoder once; the decoder starts from
                     `start_token` and caches its self-attention and the cross-attention
                     keys/values of the encoder output (PP: encoder stages, then decoder stages)
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.distributed as dist

from ..mpu import parallel_state as ps
from ..pipeline import p2p
from ..models.roformer import unified_attention_mask


def _key_padding_mask(keep: torch.Tensor) -> Optional[torch.Tensor]:
    """[b, end] keep -> core attention's [b, 1, 1, end] (True = masked), None without padding."""
    if bool(keep.all()):
        return None
    return (~keep)[:, None, None, :]


def run_pipeline_stage(model, compute: Callable[[Optional[torch.Tensor]], torch.Tensor], dtype: torch.dtype,
                       first: int = 0, last: Optional[int] = None) -> Optional[torch.Tensor]:
    """This stage's part of one forward pass through pipeline stages first..last (default:
    all): take the previous stage's output (None on `first`), compute(received), hand the
    result on. Stage `last` returns its output; the others, and stages outside the range
    (T5's encoder stages while the decoder runs), return None."""
    size = ps.get_pipeline_model_parallel_world_size()
    if size == 1:
        return compute(None)
    rank, last = ps.get_pipeline_model_parallel_rank(), size - 1 if last is None else last
    if not first <= rank <= last:
        return None
    config = p2p.P2PConfig(dtype=dtype, variable_seq_lengths=True)
    received = None
    if rank > first:
        received, _ = p2p.exchange(config, recv_prev=True)
        received = received.detach()
    output = compute(received)
    if rank == last:
        return output
    p2p.exchange(config, send_next=output)
    return None


def _as_stage_input(model, received: Optional[torch.Tensor]) -> None:
    if received is not None:
        model.set_input_tensor(received)


def _right_padded(tokens: torch.Tensor, keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows with their real tokens moved to the front, in order."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    return tokens.gather(1, order), keep.gather(1, order)


class CausalLMDecoder:
    def __init__(self, model):
        self.model = model

    def begin(self, tokens: torch.Tensor, keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return tokens, keep

    def step(self, tokens, positions, keep, context):
        model = self.model

        def compute(received):
            _as_stage_input(model, received)
            return model(tokens, positions, attention_mask=_key_padding_mask(keep), inference_context=context)
        return run_pipeline_stage(model, compute, model.config.params_dtype)


class RoFormerLMDecoder:
    """Positions are the padded sequence's indices, as RoFormerModel.forward uses them
    (rotary scores depend only on distances, so left padding changes nothing)."""

    def __init__(self, model):
        self.model = model

    def begin(self, tokens, keep):
        return tokens, keep

    def step(self, tokens, positions, keep, context):
        model = self.model
        start, end = context.sequence_len_offset, keep.shape[1]
        types = torch.ones_like(keep, dtype=torch.long)
        # The model's own unified mask over everything so far; this step's query rows.
        mask = unified_attention_mask(keep.long(), types)[:, :, start:end, :]
        angles = model.rotary(torch.arange(start, end, device=tokens.device).expand(tokens.shape[0], -1))

        def compute(received):
            hidden = model.embedding(tokens, None, types[:, start:end]) if model.pre_process else received
            hidden = model.encoder(hidden, mask, angles, inference_context=context)
            return model.heads(hidden)[0] if model.post_process else hidden
        return run_pipeline_stage(model, compute, model.config.params_dtype)


class T5Decoder:
    """With pipeline parallelism (stages below the split rank hold the encoder, the others
    the decoder) the prompt runs once through the encoder stages; the last encoder stage
    broadcasts the encoder output over the pipeline group, and each step then runs through
    the decoder stages only, every decoder stage attending to that output with its own
    cross-attention cache."""

    def __init__(self, model, start_token: int):
        self.model = model
        self.start_token = int(start_token)
        self.encoder_output = self.encoder_keep = None
        self.split = ps.get_pipeline_model_parallel_split_rank() \
            if ps.get_pipeline_model_parallel_world_size() > 1 else None

    def begin(self, tokens, keep):
        """The prompt is the encoder's input, its tokens moved to the front of the row (right
        padded, as in training: learned positions count from the first real token); the
        decoder starts from start_token."""
        tokens, keep = _right_padded(tokens, keep)
        self.encoder_keep = keep
        self.encoder_output = self._encode(tokens, keep)
        start = torch.full((tokens.shape[0], 1), self.start_token, dtype=tokens.dtype, device=tokens.device)
        return start, torch.ones_like(start, dtype=torch.bool)

    def _encode(self, tokens, keep):
        model, split = self.model, self.split
        if split is None:
            return model.encode(tokens, keep.long())
        dtype = model.config.params_dtype
        output = run_pipeline_stage(model, lambda received: model.encode(tokens, keep.long(), hidden=received),
                                    dtype, first=0, last=split - 1)
        if output is None:
            # [s_enc, b, h]: no sequence parallelism in inference.
            output = torch.empty(tokens.shape[1], tokens.shape[0], model.config.hidden_size, dtype=dtype,
                                 device=tokens.device)
        output = output.contiguous()
        source = ps.get_pipeline_model_parallel_ranks()[split - 1]
        dist.broadcast(output, src=source, group=ps.get_pipeline_model_parallel_group())
        return output

    def step(self, tokens, positions, keep, context):
        model = self.model

        def compute(received):
            hidden = model.decode(tokens, self.encoder_output, None, self.encoder_keep.long(), hidden=received,
                                  inference_context=context)
            return model._head(hidden, None) if model.post_process else hidden
        return run_pipeline_stage(model, compute, model.config.params_dtype, first=self.split or 0)
