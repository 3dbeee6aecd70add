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
                     keys/values of the encoder output
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from ..errors import ConfigError
from ..mpu import parallel_state as ps
from ..pipeline import p2p
from ..models.roformer import unified_attention_mask


def _key_padding_mask(keep: torch.Tensor) -> Optional[torch.Tensor]:
    """[b, end] keep -> core attention's [b, 1, 1, end] (True = masked), None without padding."""
    if bool(keep.all()):
        return None
    return (~keep)[:, None, None, :]


def run_pipeline_stage(model, compute: Callable[[], torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """This stage's part of one forward pass: take the previous stage's output, compute,
    hand the result on. The last stage returns its output, the others None."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return compute()
    config = p2p.P2PConfig(dtype=dtype, variable_seq_lengths=True)
    if not ps.is_pipeline_first_stage():
        received, _ = p2p.exchange(config, recv_prev=True)
        model.set_input_tensor(received.detach())
    output = compute()
    if ps.is_pipeline_last_stage():
        return output
    p2p.exchange(config, send_next=output)
    return None


class CausalLMDecoder:
    def __init__(self, model):
        self.model = model

    def begin(self, tokens: torch.Tensor, keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return tokens, keep

    def step(self, tokens, positions, keep, context):
        model = self.model
        return run_pipeline_stage(model, lambda: model(
            tokens, positions, attention_mask=_key_padding_mask(keep), inference_context=context),
            model.config.params_dtype)


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

        def compute():
            hidden = model.embedding(tokens, None, types[:, start:end]) if model.pre_process else model.input_tensor
            hidden = model.encoder(hidden, mask, angles, inference_context=context)
            return model.heads(hidden)[0] if model.post_process else hidden
        return run_pipeline_stage(model, compute, model.config.params_dtype)


class T5Decoder:
    def __init__(self, model, start_token: int):
        if ps.get_pipeline_model_parallel_world_size() > 1:
            raise ConfigError("T5 generation runs on one pipeline stage; merge the checkpoint's pipeline stages "
                              "(run on one process, or reshard with tools/change_mp.py).")
        self.model = model
        self.start_token = int(start_token)
        self.encoder_output = self.encoder_keep = None

    def begin(self, tokens, keep):
        """The prompt (left padded) is the encoder's input; the decoder starts from start_token."""
        self.encoder_keep = keep
        self.encoder_output = self.model.encode(tokens, keep.long())
        start = torch.full((tokens.shape[0], 1), self.start_token, dtype=tokens.dtype, device=tokens.device)
        return start, torch.ones_like(start, dtype=torch.bool)

    def step(self, tokens, positions, keep, context):
        model = self.model
        hidden = model.decode(tokens, self.encoder_output, None, self.encoder_keep.long(),
                              inference_context=context)
        return model._head(hidden, None)
