"""Point-to-point exchange of activations and gradients between adjacent pipeline stages.

Every call names what this rank sends and what it expects, in both directions at once:

    forward activations  flow  stage i  -> stage i+1   ("next")
    backward gradients   flow  stage i+1 -> stage i    ("prev")

and `exchange` posts all of it as one batch (torch.distributed.batch_isend_irecv) so a
rank that both sends and receives never waits on a peer that is itself waiting. Backends
without batched p2p get the same operations posted one by one in an order that cannot
deadlock: even pipeline ranks send before they receive, odd ones receive first.

Shapes are either fixed for the run (`tensor_shape`, the Megatron default: [s, b, h]) or,
with `variable_seq_lengths`, sent ahead of each tensor as a small int64 header, so
sequences of different length per micro-batch work. Received tensors require grad, as
the stage's backward needs their gradient.

On the first stage "prev" does not exist and on the last stage "next" does not; calls
that would talk to them are no-ops (receives return None), so schedules can be written
once for every stage. Virtual pipeline stages (interleaved schedule) talk around the
ring: the last physical stage's next is the first one, which is what its next virtual
chunk needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..mpu import parallel_state as ps

_MAX_DIMS = 8
_MAX_TENSORS = 4
_FORWARD_TAG = 1   # activations, stage i -> i+1
_BACKWARD_TAG = 2  # gradients, stage i+1 -> i


@dataclass
class P2PConfig:
    """How stages exchange tensors. tensor_shape is [seq (/tp with SP), micro_batch, hidden]."""

    tensor_shape: Optional[Sequence[int]] = None
    dtype: torch.dtype = torch.float32
    # Exchange each tensor's shape first (sequence length varies between micro-batches).
    variable_seq_lengths: bool = False
    # Use torch.distributed.batch_isend_irecv; None: use it when the backend supports it.
    batch_p2p_comm: Optional[bool] = None
    # Stages that send several tensors (T5 decoder stages: decoder hidden and encoder
    # output): stage rank -> shapes of what that stage sends forward. Messages are then
    # lists. Overrides tensor_shape.
    stage_output_shapes: Optional[Callable[[int], Sequence[Sequence[int]]]] = None

    def device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _backend_batches_p2p() -> bool:
    # gloo and nccl both implement batch_isend_irecv in the torch versions we support;
    # mpi and third-party backends may not.
    return dist.get_backend() in ("gloo", "nccl")


def _ring_neighbors() -> Tuple[int, int]:
    return ps.get_pipeline_model_parallel_prev_rank(), ps.get_pipeline_model_parallel_next_rank()


def _post(ops: List[dist.P2POp], batched: bool, pipeline_rank: int) -> List:
    if not ops:
        return []
    if batched:
        return dist.batch_isend_irecv(ops)
    # One by one: even ranks send first, odd ranks receive first, so every send meets a
    # posted receive on its neighbour even when both talk to each other.
    sends = [op for op in ops if op.op is dist.isend]
    recvs = [op for op in ops if op.op is dist.irecv]
    ordered = sends + recvs if pipeline_rank % 2 == 0 else recvs + sends
    return [op.op(op.tensor, op.peer, tag=op.tag) for op in ordered]


def _transfer(send_next: List[torch.Tensor], send_prev: List[torch.Tensor],
              recv_prev: List[torch.Tensor], recv_next: List[torch.Tensor], batched: bool) -> None:
    """Post every send and receive of one exchange and wait for all of them.

    With two stages (or round the ring) "prev" and "next" are the same peer, and backends
    match messages between two peers in the order they are posted. So every rank posts
    activations before gradients, on the sending and on the receiving side, and tags the
    two directions apart where the backend honours tags."""
    prev, next_ = _ring_neighbors()
    ops = ([dist.P2POp(dist.isend, t, next_, tag=_FORWARD_TAG) for t in send_next]
           + [dist.P2POp(dist.isend, t, prev, tag=_BACKWARD_TAG) for t in send_prev]
           + [dist.P2POp(dist.irecv, t, prev, tag=_FORWARD_TAG) for t in recv_prev]
           + [dist.P2POp(dist.irecv, t, next_, tag=_BACKWARD_TAG) for t in recv_next])
    for work in _post(ops, batched, ps.get_pipeline_model_parallel_rank()):
        work.wait()


def _as_list(x) -> Optional[List[torch.Tensor]]:
    if x is None:
        return None
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _shape_header(tensors: Optional[List[torch.Tensor]], device) -> torch.Tensor:
    """[count, then per tensor: ndim and up to _MAX_DIMS sizes]."""
    header = torch.zeros(1 + _MAX_TENSORS * (_MAX_DIMS + 1), dtype=torch.int64)
    if tensors is not None:
        if len(tensors) > _MAX_TENSORS or any(t.dim() > _MAX_DIMS for t in tensors):
            raise ValueError(f"a pipeline message holds at most {_MAX_TENSORS} tensors of at most "
                             f"{_MAX_DIMS} dimensions; got shapes {[tuple(t.shape) for t in tensors]}.")
        header[0] = len(tensors)
        for i, t in enumerate(tensors):
            base = 1 + i * (_MAX_DIMS + 1)
            header[base] = t.dim()
            header[base + 1:base + 1 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    return header.to(device)


def _parse_header(header: torch.Tensor) -> List[Tuple[int, ...]]:
    values = header.tolist()
    shapes = []
    for i in range(values[0]):
        base = 1 + i * (_MAX_DIMS + 1)
        shapes.append(tuple(values[base + 1:base + 1 + values[base]]))
    return shapes


def _exchange_shapes(config: P2PConfig, send_prev, send_next, recv_prev: bool, recv_next: bool):
    """Send the shapes of what goes out; learn the shapes of what comes in."""
    device = config.device()
    inbox = {side: _shape_header(None, device) for side, wanted in (("prev", recv_prev), ("next", recv_next))
             if wanted}
    # Shapes always go one by one: a batch that mixes them with the payload could be
    # matched out of order by backends that pair by arrival.
    _transfer([_shape_header(send_next, device)] if send_next is not None else [],
              [_shape_header(send_prev, device)] if send_prev is not None else [],
              [inbox["prev"]] if recv_prev else [], [inbox["next"]] if recv_next else [], batched=False)
    return {side: _parse_header(h) for side, h in inbox.items()}


def _known_shapes(config: P2PConfig, recv_prev: bool, recv_next: bool):
    stage = ps.get_pipeline_model_parallel_rank()
    if config.stage_output_shapes is not None:
        # What comes from prev is prev's output; what comes from next is the gradient
        # of this stage's own output.
        stages = ps.get_pipeline_model_parallel_world_size()
        return {"prev": [tuple(x) for x in config.stage_output_shapes((stage - 1) % stages)],
                "next": [tuple(x) for x in config.stage_output_shapes(stage)]}
    if config.tensor_shape is None and (recv_prev or recv_next):
        raise ValueError("P2PConfig.tensor_shape is None; set it to [seq, micro_batch, hidden] "
                         "(or stage_output_shapes), or turn on variable_seq_lengths.")
    fixed = [tuple(config.tensor_shape)] if config.tensor_shape is not None else None
    return {"prev": fixed, "next": fixed}


def exchange(config: P2PConfig, *, send_next=None, send_prev=None, recv_prev: bool = False,
             recv_next: bool = False):
    """Send/receive in both directions at once; returns (from_prev, from_next).

    send_next / send_prev are a tensor or a list of tensors (None: nothing to send).
    Received messages are single tensors, or lists when the config describes stages
    with several outputs (stage_output_shapes) or the sender sent a list of several."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return None, None
    send_next, send_prev = _as_list(send_next), _as_list(send_prev)
    if config.variable_seq_lengths:
        shapes = _exchange_shapes(config, send_prev, send_next, recv_prev, recv_next)
    else:
        shapes = _known_shapes(config, recv_prev, recv_next)
    device = config.device()

    def buffers(side, wanted):
        if not wanted:
            return None
        return [torch.empty(shape, dtype=config.dtype, device=device, requires_grad=True)
                for shape in shapes[side]]

    from_prev, from_next = buffers("prev", recv_prev), buffers("next", recv_next)
    batched = config.batch_p2p_comm if config.batch_p2p_comm is not None else _backend_batches_p2p()
    _transfer([t.detach().contiguous() for t in send_next or []],
              [t.detach().contiguous() for t in send_prev or []],
              [t.data for t in from_prev or []], [t.data for t in from_next or []], batched)

    def unwrap(received):
        if received is None:
            return None
        if config.stage_output_shapes is None and len(received) == 1:
            return received[0]
        return received

    return unwrap(from_prev), unwrap(from_next)


# --- the named operations schedules use (Megatron's vocabulary) -------------------------
def recv_forward(config: P2PConfig) -> Optional[torch.Tensor]:
    if ps.is_pipeline_first_stage():
        return None
    return exchange(config, recv_prev=True)[0]


def recv_backward(config: P2PConfig) -> Optional[torch.Tensor]:
    if ps.is_pipeline_last_stage():
        return None
    return exchange(config, recv_next=True)[1]


def send_forward(output: Optional[torch.Tensor], config: P2PConfig) -> None:
    if not ps.is_pipeline_last_stage():
        exchange(config, send_next=output)


def send_backward(input_grad: Optional[torch.Tensor], config: P2PConfig) -> None:
    if not ps.is_pipeline_first_stage():
        exchange(config, send_prev=input_grad)


def send_forward_recv_backward(output: Optional[torch.Tensor], config: P2PConfig) -> Optional[torch.Tensor]:
    if ps.is_pipeline_last_stage():
        return None
    return exchange(config, send_next=output, recv_next=True)[1]


def send_backward_recv_forward(input_grad: Optional[torch.Tensor], config: P2PConfig) -> Optional[torch.Tensor]:
    if ps.is_pipeline_first_stage():
        return None
    return exchange(config, send_prev=input_grad, recv_prev=True)[0]
