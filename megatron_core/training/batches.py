"""get_batch_* per model family: one raw micro-batch -> the model's inputs on this rank's device.

    batch = get_batch_gpt(data_iterator, tokenizer.eod, options)
    loss = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels)

The first rank of a tensor-parallel group reads the micro-batch; the others hold a
ReceiveFromTensorParallelSource (data_iterators.py) and get the same tensors through
`mpu.broadcast_data`, as Megatron's get_batch does. A model chunk without an iterator
(None: a middle pipeline stage of a family that needs no batch there) gets a batch whose
fields are all None, so a forward step reads the same on every stage.

Masks follow the models: GPT's attention_mask is bool, True = may not attend (None:
causal only); BERT/RoFormer take the padding mask (1 = token); T5 takes keep masks
(1 = may attend). Loss masks are float.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from ..errors import DataError
from ..models.roformer import unified_lm_targets
from .data_iterators import ReceiveFromTensorParallelSource
from .data_options import DataOptions

_EXHAUSTED = object()


def batch_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _tensor_parallel_size() -> int:
    from ..mpu import parallel_state as ps
    if not (dist.is_available() and dist.is_initialized() and ps.model_parallel_is_initialized()):
        return 1
    return ps.get_tensor_model_parallel_world_size()


def receive_micro_batch(data_iterator, keys: List[str]) -> Optional[Dict[str, torch.Tensor]]:
    """{key: int64 tensor} of the next micro-batch on every rank of the TP group; None without an iterator."""
    if data_iterator is None:
        return None
    device = batch_device()
    raw = next(data_iterator, _EXHAUSTED)
    if _tensor_parallel_size() == 1:
        if raw is _EXHAUSTED:
            raise _ran_out()
        return {key: torch.as_tensor(raw[key]).to(device=device, dtype=torch.int64) for key in keys}
    from .. import mpu
    from ..mpu import parallel_state as ps
    # The source says first whether it has a batch, so its peers stop with it instead of waiting.
    exhausted = torch.tensor([int(raw is _EXHAUSTED)], device=device)
    dist.broadcast(exhausted, ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group())
    if exhausted.item():
        raise _ran_out()
    data = None
    if not isinstance(data_iterator, ReceiveFromTensorParallelSource):
        data = {key: torch.as_tensor(raw[key]).to(torch.int64) for key in keys}
    return mpu.broadcast_data(keys, data, torch.int64, device)


def _ran_out() -> DataError:
    return DataError("the data iterator ran out before the run ended: the datasets hold fewer samples than "
                     "the iterations read; build them with train_valid_test_num_samples(...) of this run.")


class _Batch:
    @classmethod
    def empty(cls):
        return cls(**{f.name: None for f in fields(cls)})

    def __getitem__(self, name: str):
        """batch["tokens"] reads like batch.tokens, for forward steps written against dicts."""
        return getattr(self, name)


# --- GPT and finetune -------------------------------------------------------------------------------

@dataclass
class GPTBatch(_Batch):
    tokens: Optional[torch.Tensor]           # [b, s]
    labels: Optional[torch.Tensor]           # [b, s], tokens shifted left by one
    loss_mask: Optional[torch.Tensor]        # [b, s] float
    attention_mask: Optional[torch.Tensor]   # [b, 1, s, s] bool, True = masked; None = causal only
    position_ids: Optional[torch.Tensor]     # [b, s]


def ltor_masks_and_position_ids(tokens: torch.Tensor, eod: Optional[int], reset_position_ids: bool = False,
                                reset_attention_mask: bool = False, eod_mask_loss: bool = False):
    """(loss_mask, attention_mask, position_ids) of a left-to-right batch, Megatron's flags:
    the token after an EOD starts a new document (positions from 0, attention only within it)."""
    b, s = tokens.shape
    arange = torch.arange(s, device=tokens.device)
    is_eod = tokens == eod if eod is not None else torch.zeros_like(tokens, dtype=torch.bool)
    loss_mask = torch.ones(b, s, dtype=torch.float, device=tokens.device)
    if eod_mask_loss:
        loss_mask[is_eod] = 0.0
    # starts[i]: first position of the document token i belongs to (an EOD ends its document)
    begins = torch.zeros_like(is_eod)
    begins[:, 1:] = is_eod[:, :-1]
    starts = torch.cummax(torch.where(begins, arange, torch.zeros_like(arange)), dim=1).values
    position_ids = (arange - starts) if reset_position_ids else arange.expand(b, s).clone()
    attention_mask = None
    if reset_attention_mask:
        causal = torch.ones(s, s, dtype=torch.bool, device=tokens.device).triu(1)
        other_document = starts[:, :, None] != starts[:, None, :]
        attention_mask = (causal | other_document).unsqueeze(1)
    return loss_mask, attention_mask, position_ids


def get_batch_gpt(data_iterator, eod: Optional[int], options: Optional[DataOptions] = None) -> GPTBatch:
    """Causal-LM batch from GPTDataset samples {"text": [b, s + 1]}."""
    data = receive_micro_batch(data_iterator, ["text"])
    if data is None:
        return GPTBatch.empty()
    options = options or DataOptions()
    text = data["text"]
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    loss_mask, attention_mask, position_ids = ltor_masks_and_position_ids(
        tokens, eod, options.reset_position_ids, options.reset_attention_mask, options.eod_mask_loss)
    return GPTBatch(tokens, labels, loss_mask, attention_mask, position_ids)


def get_batch_finetune(data_iterator) -> GPTBatch:
    """FinetuneDataset batch: loss on the text (and its EOD) only, never the prompt or padding."""
    data = receive_micro_batch(data_iterator, ["text", "loss_mask"])
    if data is None:
        return GPTBatch.empty()
    text = data["text"]
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    b, s = tokens.shape
    position_ids = torch.arange(s, device=tokens.device).expand(b, s).clone()
    return GPTBatch(tokens, labels, data["loss_mask"].float(), None, position_ids)


# --- Transformer-XL ---------------------------------------------------------------------------------

@dataclass
class TransformerXLBatch(_Batch):
    tokens: Optional[torch.Tensor]      # [b, s]; row i continues row i of the previous iteration
    labels: Optional[torch.Tensor]      # [b, s]
    loss_mask: Optional[torch.Tensor]   # [b, s] float


def get_batch_transformer_xl(data_iterator, eod: Optional[int] = None,
                             options: Optional[DataOptions] = None) -> TransformerXLBatch:
    data = receive_micro_batch(data_iterator, ["text"])
    if data is None:
        return TransformerXLBatch.empty()
    text = data["text"]
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    loss_mask = torch.ones(tokens.shape, dtype=torch.float, device=tokens.device)
    if options is not None and options.eod_mask_loss and eod is not None:
        loss_mask[tokens == eod] = 0.0
    return TransformerXLBatch(tokens, labels, loss_mask)


# --- BERT and RoFormer ------------------------------------------------------------------------------

@dataclass
class BertBatch(_Batch):
    tokens: Optional[torch.Tensor]          # [b, s], masked
    types: Optional[torch.Tensor]           # [b, s], 0 for segment A, 1 for B
    padding_mask: Optional[torch.Tensor]    # [b, s], 1 = token, 0 = padding
    lm_labels: Optional[torch.Tensor]       # [b, s], original ids where masked, -1 elsewhere
    loss_mask: Optional[torch.Tensor]       # [b, s] float, 1 where masked
    sentence_order: Optional[torch.Tensor]  # [b], 1 = random next (NSP) / swapped (SOP)


def get_batch_bert(data_iterator) -> BertBatch:
    data = receive_micro_batch(data_iterator, ["text", "types", "labels", "is_random", "loss_mask", "padding_mask"])
    if data is None:
        return BertBatch.empty()
    return BertBatch(data["text"], data["types"], data["padding_mask"], data["labels"], data["loss_mask"].float(),
                     data["is_random"])


@dataclass
class RoFormerBatch(_Batch):
    tokens: Optional[torch.Tensor]        # [b, s]
    types: Optional[torch.Tensor]         # [b, s], 0 = masked-LM token, 1 = left-to-right LM token
    padding_mask: Optional[torch.Tensor]  # [b, s], 1 = token
    labels: Optional[torch.Tensor]        # [b, s]: MLM labels, or the next token on LM samples
    loss_mask: Optional[torch.Tensor]     # [b, s] float


def get_batch_roformer(data_iterator) -> RoFormerBatch:
    data = receive_micro_batch(data_iterator, ["text", "types", "labels", "loss_mask", "padding_mask"])
    if data is None:
        return RoFormerBatch.empty()
    labels, loss_mask = unified_lm_targets(data["text"], data["types"], data["padding_mask"],
                                           data["labels"], data["loss_mask"])
    return RoFormerBatch(data["text"], data["types"], data["padding_mask"], labels, loss_mask.float())


# --- T5 ------------------------------------------------------------------------------------------------

@dataclass
class T5Batch(_Batch):
    encoder_input_ids: Optional[torch.Tensor]        # [b, s_enc], with sentinels
    decoder_input_ids: Optional[torch.Tensor]        # [b, s_dec], BOS + labels shifted right
    labels: Optional[torch.Tensor]                   # [b, s_dec], -1 on padding
    loss_mask: Optional[torch.Tensor]                # [b, s_dec] float
    encoder_attention_mask: Optional[torch.Tensor]   # [b, s_enc, s_enc] bool, True = may attend
    decoder_attention_mask: Optional[torch.Tensor]   # [b, s_dec, s_dec] bool (causal and padding)
    enc_dec_attention_mask: Optional[torch.Tensor]   # [b, s_dec, s_enc] bool


def get_batch_t5(data_iterator) -> T5Batch:
    data = receive_micro_batch(data_iterator, ["text_enc", "text_dec", "labels", "loss_mask", "enc_mask",
                                               "dec_mask", "enc_dec_mask"])
    if data is None:
        return T5Batch.empty()
    return T5Batch(data["text_enc"], data["text_dec"], data["labels"], data["loss_mask"].float(),
                   data["enc_mask"].bool(), data["dec_mask"].bool(), data["enc_dec_mask"].bool())
