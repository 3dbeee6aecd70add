"""NVIDIA megatron-core models on the CPU, for tests that judge our files by megatron-core itself.

    with megatron_world(tp=2):                 # inside a gloo rank (run_distributed)
        model = build_gpt("llama")
        save_megatron(model, directory)        # megatron.core.dist_checkpointing, torch_dist

megatron-core assumes CUDA in places that building, saving and loading reach:
GlobalMemoryBuffer and the checkpoint writer allocate on torch.cuda.current_device(), the
writer calls torch.cuda.synchronize(), and the RNG tracker wants CUDA generators unless it
is told to use the inference tracker. Its writer also forks a child per file, which a
test's (daemonic) rank may not. `on_cpu()` points the first two at the CPU and runs the
writer's per-file function in-process for the duration (the bytes it writes are megatron's);
the seed is set with inference_rng_tracker=True. Layers come from the local
(no Transformer Engine) specs with every fusion off.

Two small families, hidden 64, 4 heads, 2 layers, vocab 128:
  "gpt2"   learned absolute positions, LayerNorm, GeLU, biases, tied embeddings
  "llama"  rope, RMSNorm, SwiGLU, GQA with 2 query groups, no biases, untied output layer
and a BERT of the same size (LayerNorm, GeLU, binary head, untied).
"""
from __future__ import annotations

import contextlib
import os
import queue
import warnings

import torch
import torch.nn.functional as F

megatron_core_upstream = None      # imported lazily: the test module importorskips it first

VOCAB, HIDDEN, HEADS, LAYERS, MAX_SEQUENCE = 128, 64, 4, 2, 32


def _upstream():
    global megatron_core_upstream
    if megatron_core_upstream is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # "Transformer Engine and Apex are not installed"
            import megatron.core as upstream
            import megatron.core.dist_checkpointing  # noqa: F401
            import megatron.core.dist_checkpointing.strategies.filesystem_async  # noqa: F401
            import megatron.core.models.bert.bert_model  # noqa: F401
            import megatron.core.models.gpt  # noqa: F401
        megatron_core_upstream = upstream
    return megatron_core_upstream


def _write_buckets_in_process(transform_list, use_msc, rank, write_buckets, global_results_queue):
    """megatron-core's writer, each bucket written by its own write_preloaded_data as in
    megatron, but in this process instead of forked children (test ranks are daemonic
    processes, which may not have children)."""
    writer = _upstream().dist_checkpointing.strategies.filesystem_async.FileSystemWriterAsync
    results, done = queue.Queue(), queue.Queue()
    collected = {}
    for index, bucket in enumerate(write_buckets):
        done.put(index)
        writer.write_preloaded_data(transform_list, index, bucket, results, done, True)
        index, outcome = results.get()
        if isinstance(outcome, Exception):
            global_results_queue.put(outcome)
            return
        collected[index] = outcome
    global_results_queue.put(collected)


@contextlib.contextmanager
def on_cpu():
    """megatron-core's CUDA-only calls made harmless while inside: the current device is the
    CPU (GlobalMemoryBuffer and the writer's failure all-reduce allocate on it), there is
    nothing to synchronize, and the checkpoint writer writes in this process."""
    filesystem_async = _upstream().dist_checkpointing.strategies.filesystem_async
    writer = filesystem_async.FileSystemWriterAsync
    saved = (torch.cuda.current_device, torch.cuda.synchronize, filesystem_async._results_queue,
             writer.__dict__["write_preloaded_data_multiproc"])
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: "cpu"
        torch.cuda.synchronize = lambda *args, **kwargs: None
    filesystem_async._results_queue = queue.Queue()     # instead of a multiprocessing Manager's
    writer.write_preloaded_data_multiproc = staticmethod(_write_buckets_in_process)
    try:
        yield
    finally:
        (torch.cuda.current_device, torch.cuda.synchronize, filesystem_async._results_queue,
         writer.write_preloaded_data_multiproc) = saved


@contextlib.contextmanager
def megatron_world(tp: int = 1, pp: int = 1, seed: int = 1234):
    """megatron-core's parallel state over the already initialized default (gloo) group."""
    upstream = _upstream()
    with on_cpu():
        upstream.parallel_state.initialize_model_parallel(tp, pp)
        try:
            upstream.tensor_parallel.model_parallel_cuda_manual_seed(
                seed, inference_rng_tracker=True, force_reset_rng=True)
            yield
        finally:
            upstream.parallel_state.destroy_model_parallel()


def transformer_config(family: str):
    from megatron.core.transformer.transformer_config import TransformerConfig
    common = dict(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS,
                  use_cpu_initialization=True, bias_activation_fusion=False, masked_softmax_fusion=False,
                  persist_layer_norm=False, bias_dropout_fusion=False, apply_rope_fusion=False,
                  gradient_accumulation_fusion=False, pipeline_dtype=torch.float32,
                  tensor_model_parallel_size=_upstream().parallel_state.get_tensor_model_parallel_world_size(),
                  pipeline_model_parallel_size=_upstream().parallel_state.get_pipeline_model_parallel_world_size())
    if family == "llama":
        return TransformerConfig(**common, num_query_groups=2, gated_linear_unit=True, activation_func=F.silu,
                                 normalization="RMSNorm", add_bias_linear=False)
    return TransformerConfig(**common, activation_func=F.gelu, normalization="LayerNorm")


def build_gpt(family: str):
    """A GPTModel of `family` ("gpt2" or "llama") for this rank's pipeline stage."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    ps = _upstream().parallel_state
    llama = family == "llama"
    spec = get_gpt_layer_local_spec(normalization="RMSNorm" if llama else "LayerNorm")
    return GPTModel(transformer_config(family), spec, vocab_size=VOCAB, max_sequence_length=MAX_SEQUENCE,
                    pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
                    position_embedding_type="rope" if llama else "learned_absolute",
                    share_embeddings_and_output_weights=not llama)


def build_bert():
    from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
    from megatron.core.models.bert.bert_model import BertModel
    return BertModel(transformer_config("bert"), num_tokentypes=2, transformer_layer_spec=bert_layer_local_spec,
                     vocab_size=VOCAB, max_sequence_length=MAX_SEQUENCE, add_binary_head=True)


def build(family: str):
    return build_bert() if family == "bert" else build_gpt(family)


def save_megatron(model, directory: str, common: dict = None) -> None:
    """What Megatron-LM's --ckpt-format torch_dist writes for this model (all ranks call it)."""
    state = {"model": model.sharded_state_dict()}
    state.update(common or {})
    os.makedirs(directory, exist_ok=True)     # megatron-core saves only into an existing, empty one
    _upstream().dist_checkpointing.save(state, directory)


def load_megatron(model, directory: str) -> dict:
    """megatron-core's own load into `model`, strict; returns the common (non-tensor) state."""
    from megatron.core.dist_checkpointing.validation import StrictHandling
    from megatron.core.safe_globals import SAFE_GLOBALS       # what Megatron-LM registers at start
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        loaded = _upstream().dist_checkpointing.load({"model": model.sharded_state_dict()}, directory,
                                                     strict=StrictHandling.RAISE_ALL)
    model.load_state_dict(loaded.pop("model"), strict=True)
    return loaded


def full_state(model) -> dict:
    """A TP=1 model's state dict without megatron-core's `_extra_state` entries."""
    return {key: value for key, value in model.state_dict().items() if not key.endswith("_extra_state")}


# Megatron's tensor-parallel split of each tensor, by the end of its key: (dim, gated).
# Everything else (norms, row-parallel biases, position embeddings, heads) is replicated.
TENSOR_PARALLEL_DIMS = (
    ("embedding.word_embeddings.weight", 0), ("output_layer.weight", 0), ("output_layer.bias", 0),
    ("linear_qkv.weight", 0), ("linear_qkv.bias", 0), ("linear_fc1.weight", 0), ("linear_fc1.bias", 0),
    ("linear_proj.weight", 1), ("linear_fc2.weight", 1),
)


def split_of(key: str):
    """(dim, gated) of a tensor-parallel tensor, None for a replicated one."""
    for suffix, dim in TENSOR_PARALLEL_DIMS:
        if key.endswith(suffix):
            return dim, "linear_fc1" in key
    return None


def rank_slice(full: torch.Tensor, key: str, rank: int, size: int, swiglu: bool) -> torch.Tensor:
    """The part of TP=1 tensor `full` that tensor-parallel rank `rank` of `size` holds."""
    split = split_of(key)
    if split is None:
        return full
    dim, fc1 = split
    if swiglu and fc1:
        return torch.cat([half.chunk(size, dim)[rank] for half in full.chunk(2, dim)], dim)
    return full.chunk(size, dim)[rank]
