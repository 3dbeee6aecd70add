"""Parameters and device memory per rank of a run, from its config alone (no weights, no processes).

    estimate = estimate_memory(shape, run)        # shape: models.rank_parameters.ModelShape
    print(format_estimate(estimate))              # the block every entry point prints at start

Per rank, for the pipeline stage that needs the most (P = that rank's parameters,
stage copies included; DP = data-parallel size):

  weights      P x bytes of the parameter dtype (/ DP under ZeRO-3)
  gradients    native backend: the fp32 main_grad buffers, 4 P (Megatron keeps the whole
               buffer also with the distributed optimizer); DeepSpeed: P x parameter bytes,
               / DP under ZeRO-2/3
  optimizer    Adam: two fp32 moments (8 P) + an fp32 master copy for bf16/fp16 (4 P;
               under ZeRO 1-3 also in fp32: DeepSpeed always keeps its fp32 partition);
               SGD: the fp32 momentum (4 P, none at momentum 0) + master. / DP with
               --use-distributed-optimizer or ZeRO stage >= 1; offload_optimizer moves it
               to host memory (reported apart)
  activations  Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
               Transformer Models"), per layer and micro-batch, in the activation dtype
               (= the parameter dtype) plus 1-byte dropout masks; see layer_activation_bytes.
               Times the micro-batches a stage holds at once: 1 without pipelining, min(PP -
               rank, M) with 1F1B, the interleaved schedule's warmup + 1 chunk passes; plus
               the fp32 logits the cross entropy keeps on the last stage.

The gradients and optimizer numbers follow the tensors the native backend allocates
(tests sum them after a step); the DeepSpeed ones the tensors DeepSpeed's engine holds
(tests/test_memory_estimate_deepspeed.py sums them at ZeRO 0-3, fp32, DP=2).
Activation numbers are an estimate: they ignore allocator fragmentation, temporary
buffers of collectives and the workspace of kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from ..models.rank_parameters import ModelShape, rank_parameters
from ..mpu.layout import PipelineStage
from .config import RunConfig
from .deepspeed_config import offloads_optimizer, zero_stage

GIB = 1024 ** 3


@dataclass(frozen=True)
class LayerActivation:
    """One transformer layer's inputs and outputs: the tensors its backward needs."""
    seq: int                 # query positions s
    micro_batch: int         # b
    hidden: int              # h
    heads: int               # a
    query_size: int          # a x head dim
    kv_size: int             # key/value heads x head dim
    ffn: int                 # MLP width f
    gated: bool              # SwiGLU/GeGLU: the MLP keeps both halves of fc1's output
    keys: int                # key positions (s; s + memory for Transformer-XL)
    cross_keys: int = 0      # encoder positions a T5 decoder layer cross-attends to (0: none)
    attention_dropout: bool = True
    hidden_dropout: bool = True


def layer_activation_bytes(layer: LayerActivation, tp: int, sequence_parallel: bool, act_bytes: int,
                           selective_recompute: bool = False) -> int:
    """Bytes one layer keeps for backward for one micro-batch on one TP rank.

    Per element, as Korthikanti et al. count them (their 34 s b h + 5 a s^2 b for h = 4f,
    16-bit activations, dropout on, TP 1): the norm inputs and the inputs of the qkv and
    fc1 projections (s b h each) are whole on every TP rank unless sequence parallelism
    splits them; q, k, v, the out-projection input and the MLP's intermediate tensors are
    split by TP; the attention core (softmax output, its dropout mask and output, a s k b
    each) is split by TP and dropped by selective recomputation; dropout masks are 1 byte.
    """
    s, b, h = layer.seq, layer.micro_batch, layer.hidden
    whole = 0       # elements of act_bytes, whole on each TP rank (split with sequence parallelism)
    split = 0       # elements of act_bytes, split over TP
    masks_whole = 0
    core = 0        # bytes of the attention core, split over TP

    def attention(queries: int, keys: int) -> None:
        nonlocal whole, split, masks_whole, core
        whole += 2 * queries * b * h                                                 # norm input, projection input
        split += queries * b * layer.query_size + 2 * keys * b * layer.kv_size     # q, k, v
        split += queries * b * layer.query_size                                      # out-projection input
        scores = layer.heads * queries * keys * b
        core += scores * act_bytes * (2 if layer.attention_dropout else 1) + (scores if layer.attention_dropout else 0)
        masks_whole += queries * b * h if layer.hidden_dropout else 0

    attention(s, layer.keys)
    if layer.cross_keys:    # k and v project the encoder output, which all decoder layers share
        attention(s, layer.cross_keys)
    whole += 2 * s * b * h                                         # the MLP's norm input and fc1 input
    split += s * b * layer.ffn * (2 if layer.gated else 1)         # the activation's input
    split += s * b * layer.ffn                                     # fc2's input
    masks_whole += s * b * h if layer.hidden_dropout else 0
    whole_div = tp if sequence_parallel else 1
    total = (whole * act_bytes + masks_whole) / whole_div + split * act_bytes / tp
    if not selective_recompute:
        total += core / tp
    return int(total)


@dataclass
class MemoryEstimate:
    """Bytes per rank on the pipeline stage that needs the most (host: offloaded optimizer state)."""
    total_parameters: int
    pipeline_rank: int
    parameters: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    host_optimizer: int = 0
    notes: List[str] = field(default_factory=list)

    @property
    def device_total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def in_flight_microbatches(pipeline_rank: int, pipeline_size: int, num_microbatches: int,
                           virtual_size: Optional[int] = None) -> int:
    """Chunk forward passes whose activations a stage holds at the peak of a step."""
    if pipeline_size == 1:
        return 1
    if virtual_size:
        warmup = 2 * (pipeline_size - pipeline_rank - 1) + (virtual_size - 1) * pipeline_size
        return min(warmup + 1, num_microbatches * virtual_size)
    return min(pipeline_size - pipeline_rank, num_microbatches)


def _layer(shape: ModelShape, seq: int, micro: int, keys: Optional[int] = None, cross: int = 0) -> LayerActivation:
    c = shape.config
    return LayerActivation(seq=seq, micro_batch=micro, hidden=c.hidden_size, heads=c.num_attention_heads,
                           query_size=c.query_projection_size, kv_size=c.kv_projection_size, ffn=c.ffn_hidden_size,
                           gated=c.gated_linear_unit, keys=seq if keys is None else keys, cross_keys=cross,
                           attention_dropout=c.attention_dropout > 0, hidden_dropout=c.hidden_dropout > 0)


def _stack_bytes(layer: LayerActivation, layers: int, in_flight: int, run: RunConfig, act_bytes: int) -> int:
    """A stage's layers of one stack: full, selective or full recomputation."""
    c, tp = run.model, run.parallel.tensor_model_parallel_size
    sp = c.sequence_parallel_active
    full = layer_activation_bytes(layer, tp, sp, act_bytes)
    if c.recompute_granularity == "selective":
        return layers * in_flight * layer_activation_bytes(layer, tp, sp, act_bytes, selective_recompute=True)
    if c.recompute_granularity != "full" or layers == 0:
        return layers * in_flight * full
    checkpoint = layer.seq * layer.micro_batch * layer.hidden * act_bytes // (tp if sp else 1)
    n = min(c.recompute_num_layers, layers)
    if c.recompute_method == "block":     # the first n layers recompute, the others keep everything
        return in_flight * (n * checkpoint + (layers - n) * full)
    # uniform: one checkpoint per group of n layers, plus one group recomputed at a time
    return in_flight * math.ceil(layers / n) * checkpoint + n * full


def _activation_bytes(shape: ModelShape, run: RunConfig, pipeline_rank: int, num_microbatches: int) -> int:
    c, p = run.model, run.parallel
    act_bytes = c.params_dtype.itemsize
    s, b = run.training.seq_length, run.training.micro_batch_size
    virtual = p.virtual_pipeline_model_parallel_size
    in_flight = in_flight_microbatches(pipeline_rank, p.pipeline_model_parallel_size, num_microbatches, virtual)
    stage = PipelineStage(pipeline_rank, p.pipeline_model_parallel_size, 0 if virtual else None, virtual,
                          p.pipeline_model_parallel_split_rank)
    total = 0
    if shape.structure == "encoder_decoder":
        dec_s = shape.decoder_seq_length or s
        for name, layers, layer in (("encoder", c.num_layers, _layer(shape, s, b)),
                                    ("decoder", shape.decoder_layers, _layer(shape, dec_s, b, cross=s))):
            stack = stage.stack_stage(name)
            if stack is not None:
                total += _stack_bytes(layer, stack.layer_range(layers)[1], in_flight, run, act_bytes)
        last = stage.stack_stage("decoder") is not None and stage.stack_stage("decoder").is_last
        out_seq = dec_s
    else:
        keys = s + shape.mem_length if shape.structure == "transformer_xl" else s
        layers = stage.layer_range(c.num_layers)[1]       # one chunk; in_flight counts chunk passes
        total += _stack_bytes(_layer(shape, s, b, keys=keys), layers, in_flight, run, act_bytes)
        if shape.structure == "transformer_xl":   # the memory of every micro-batch stream, kept between steps
            total += shape.mem_length * b * c.hidden_size * act_bytes * layers * (virtual or 1) * num_microbatches
        last = stage.is_last if not virtual else pipeline_rank == p.pipeline_model_parallel_size - 1
        out_seq = s
    if last:   # the cross entropy keeps the fp32 softmax of the vocab-parallel logits
        total += 4 * out_seq * b * shape.vocab_size // p.tensor_model_parallel_size
    return total


def _state_bytes(params: int, run: RunConfig, notes: List[str]):
    """(weights, gradients, optimizer on device, optimizer on host) of one rank's parameters."""
    p, o = run.parallel, run.optimizer
    ds = run.deepspeed.resolved if run.deepspeed.deepspeed else None
    stage = zero_stage(ds) if ds is not None else None
    offload = offloads_optimizer(ds) if ds is not None else False
    weights, grads, optimizer = state_bytes(params, run.model.params_dtype.itemsize, p.data_parallel_size,
                                            o.optimizer, o.sgd_momentum, stage, p.use_distributed_optimizer)
    dp = p.data_parallel_size
    if ds is None:
        notes.append("native backend: fp32 gradient buffers" + (f", optimizer state / DP {dp} (distributed "
                     f"optimizer)" if p.use_distributed_optimizer else ""))
        return weights, grads, optimizer, 0
    notes.append(f"DeepSpeed ZeRO-{stage}" + (f", partitioned over DP {dp}" if stage else "")
                 + (", optimizer state offloaded to CPU" if offload else ""))
    return (weights, grads, 0, optimizer) if offload else (weights, grads, optimizer, 0)


def state_bytes(params: int, param_bytes: int, data_parallel_size: int, optimizer: str = "adam",
                sgd_momentum: float = 0.9, zero_stage: Optional[int] = None,
                distributed_optimizer: bool = False) -> tuple:
    """(weights, gradients, optimizer state) bytes of `params` parameters on one rank: the native
    backend (zero_stage None) or DeepSpeed's ZeRO stage. ZeRO 1-3 keep an fp32 partition of the
    weights whatever the model's dtype (stage_1_and_2.py's single_partition_of_fp32_groups,
    stage3.py's fp32_partitioned_groups_flat), so fp32 training has that copy too; measured
    against a real engine in tests/test_memory_estimate_deepspeed.py."""
    dp = data_parallel_size
    state = 8 if optimizer == "adam" else (4 if sgd_momentum else 0)
    if zero_stage is None:
        master = 4 if param_bytes != 4 else 0
        return (params * param_bytes, params * 4,
                params * (state + master) // (dp if distributed_optimizer else 1))
    master = 4 if (param_bytes != 4 or zero_stage >= 1) else 0
    weights = params * param_bytes // (dp if zero_stage >= 3 else 1)
    grads = params * param_bytes // (dp if zero_stage >= 2 else 1)
    return weights, grads, params * (state + master) // (dp if zero_stage >= 1 else 1)


def estimate_memory(shape: ModelShape, run: RunConfig) -> MemoryEstimate:
    """The estimate for the pipeline stage with the largest device total."""
    p, t = run.parallel, run.training
    num_microbatches = max(1, t.global_batch_size // (t.micro_batch_size * p.data_parallel_size))
    best = None
    for rank in range(p.pipeline_model_parallel_size):
        notes: List[str] = []
        params = rank_parameters(shape, rank, p.pipeline_model_parallel_size,
                                 p.virtual_pipeline_model_parallel_size, p.pipeline_model_parallel_split_rank)
        weights, grads, optimizer, host = _state_bytes(params, run, notes)
        estimate = MemoryEstimate(shape.total(), rank, params, weights, grads, optimizer,
                                  _activation_bytes(shape, run, rank, num_microbatches), host, notes)
        if best is None or estimate.device_total > best.device_total:
            best = estimate
    return best


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _count(n: int) -> str:
    return f"{n:,} ({n / 1e9:.2f}B)" if n >= 1e8 else f"{n:,} ({n / 1e6:.2f}M)"


def format_estimate(estimate: MemoryEstimate, run: RunConfig) -> str:
    """The readable block printed at start (rank 0) and by --dry-run."""
    p, c, t = run.parallel, run.model, run.training
    recompute = c.recompute_granularity or "none"
    if c.recompute_granularity == "full":
        recompute += f" ({c.recompute_method}, {c.recompute_num_layers} layers)"
    lines = [
        f"model parameters: {_count(estimate.total_parameters)}",
        f"layout: world size {p.world_size} = TP {p.tensor_model_parallel_size} x PP "
        f"{p.pipeline_model_parallel_size} x DP {p.data_parallel_size}"
        + (f", {p.virtual_pipeline_model_parallel_size} virtual stages" if p.virtual_pipeline_model_parallel_size
           else ""),
        f"parameters per rank (pipeline stage {estimate.pipeline_rank}, the largest): {_count(estimate.parameters)}",
        f"estimated memory per rank ({str(c.params_dtype).replace('torch.', '')}, micro-batch "
        f"{t.micro_batch_size}, seq {t.seq_length}, sequence parallel {c.sequence_parallel_active}, "
        f"recompute {recompute}):",
        f"  weights      {_gib(estimate.weights)}",
        f"  gradients    {_gib(estimate.gradients)}",
        f"  optimizer    {_gib(estimate.optimizer)}"
        + (f" (+ {_gib(estimate.host_optimizer)} in host memory)" if estimate.host_optimizer else ""),
        f"  activations  {_gib(estimate.activations)}",
        f"  total        {_gib(estimate.device_total)}  [{'; '.join(estimate.notes)}]",
    ]
    return "\n".join(lines)
