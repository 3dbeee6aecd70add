"""The loss function an entry point's forward step hands the schedules.

    output = model(batch.tokens, ..., labels=batch.labels)      # per-token losses [b, s]
    return output, masked_lm_loss(batch.loss_mask)              # -> (loss, {"lm loss": loss})

The schedules call it on the last pipeline stage with the model's output; the dictionary
is what the log line shows under Megatron's names, averaged over the micro-batches.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

from ..models.language_model import masked_mean


def masked_lm_loss(loss_mask: torch.Tensor) -> Callable[[torch.Tensor], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
    """Megatron's "lm loss": the mean of the per-token losses where `loss_mask` is 1."""
    def loss_func(per_token_loss: torch.Tensor):
        loss = masked_mean(per_token_loss.float(), loss_mask)
        return loss, {"lm loss": loss.detach()}
    return loss_func
