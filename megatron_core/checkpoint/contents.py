"""What one rank's checkpoint file holds, and putting it back.

The model file of a (TP, PP) rank (written by its data-parallel rank 0):

    checkpoint_version     3.0, Megatron-LM's version of this layout
    format_version         ours (FORMAT_VERSION), raised when the contents change
    iteration, consumed_train_samples, consumed_valid_samples
    model | model0, model1 ...   the chunk's state dict; one per virtual pipeline stage
    sharding_map           {"model": map} keyed as above (mpu.sharding_map, plain data)
    optimizer              the backend's optimizer state (absent with the distributed
                           optimizer: each data-parallel rank's shard is its own file)
    grad_scaler            the fp16 loss scaler, on its own so --no-load-optim keeps it
    opt_param_scheduler    the learning-rate schedule
    rng_state              [one dict per data-parallel rank] (rng_state.py)
    args                   the flags as plain values (run_record.py)
    model_config           TransformerConfig.to_dict()
    model_family, model_options   the family and its builder's other arguments (model_record.py)
    parallel               TP, PP, virtual PP, DP sizes and the distributed-optimizer setting
    vocab_size, padded_vocab_size   the tokenizer's and the embedding's

Everything is a tensor, str, int, float, bool, None, list or dict, so the file loads
with torch.load(weights_only=True).
"""
from __future__ import annotations

from typing import Dict, List, Optional

from .model_record import model_record
from .run_record import args_to_dict

FORMAT_VERSION = 1
# The optimizer entry of a resharded checkpoint: {chunk key: {parameter name: {field: tensor}}}
# (reshard/optimizer_state.py), which the native backend loads at any layout.
PER_PARAMETER = "per_parameter"
MEGATRON_CHECKPOINT_VERSION = 3.0


def model_keys(num_chunks: int) -> List[str]:
    """Megatron-LM's names: "model" for one chunk, "model0", "model1", ... for virtual stages."""
    return ["model"] if num_chunks == 1 else [f"model{i}" for i in range(num_chunks)]


def parallel_record(run) -> Dict:
    p = run.parallel
    return {"tensor_model_parallel_size": p.tensor_model_parallel_size,
            "pipeline_model_parallel_size": p.pipeline_model_parallel_size,
            "virtual_pipeline_model_parallel_size": p.virtual_pipeline_model_parallel_size,
            "data_parallel_size": p.data_parallel_size,
            "use_distributed_optimizer": p.use_distributed_optimizer}


def model_state(run, args, chunks, backend_state: Dict, lr_schedule, train_state, rng_states: List[Dict],
                include_optimizer: bool, family: str, model_options: Dict, vocab_size: Optional[int],
                padded_vocab_size: Optional[int]) -> Dict:
    keys = model_keys(len(chunks))
    true_vocab = vocab_size
    record = args_to_dict(args)
    record.update(padded_vocab_size=padded_vocab_size,     # where Megatron-LM's args hold it
                  consumed_train_samples=train_state.consumed_samples,
                  consumed_valid_samples=train_state.consumed_valid_samples)   # where Megatron-LM keeps them
    state = {
        "checkpoint_version": MEGATRON_CHECKPOINT_VERSION,
        "format_version": FORMAT_VERSION,
        "iteration": train_state.iteration,
        "consumed_train_samples": train_state.consumed_samples,
        "consumed_valid_samples": train_state.consumed_valid_samples,
        "args": record,
        "model_config": run.model.to_dict(),
        **model_record(family, model_options),
        "parallel": parallel_record(run),
        "vocab_size": true_vocab,
        "padded_vocab_size": padded_vocab_size,
        "opt_param_scheduler": lr_schedule.state_dict(),
        "rng_state": rng_states,
        "sharding_map": {},
    }
    for key, chunk in zip(keys, chunks):
        state[key] = chunk.state_dict()
        if hasattr(chunk, "sharding_map"):
            state["sharding_map"][key] = chunk.sharding_map(vocab_size=true_vocab).to_dict()
    optimizer = {k: v for k, v in backend_state.items() if k != "grad_scaler"}
    if include_optimizer:
        state["optimizer"] = optimizer
    if "grad_scaler" in backend_state:
        state["grad_scaler"] = backend_state["grad_scaler"]
    return state


def optimizer_shard_state(backend_state: Dict, iteration: int, data_parallel_rank: int,
                          data_parallel_size: int) -> Dict:
    return {"format_version": FORMAT_VERSION, "iteration": iteration, "data_parallel_rank": data_parallel_rank,
            "data_parallel_size": data_parallel_size,
            "optimizer": {k: v for k, v in backend_state.items() if k != "grad_scaler"}}


def rng_state_of_rank(rng_states, data_parallel_rank: int) -> Optional[Dict]:
    """This data-parallel rank's streams; a checkpoint of fewer DP ranks gives the first."""
    if not rng_states:
        return None
    if isinstance(rng_states, dict):
        return rng_states
    return rng_states[data_parallel_rank] if data_parallel_rank < len(rng_states) else rng_states[0]
