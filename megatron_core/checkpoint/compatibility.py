"""Does a checkpoint fit the run loading it? One sentence naming the mismatch and the fix.

Parallel sizes: a checkpoint holds one file per (TP, PP) rank, split for the sizes it was
saved with; the checkpointer reshards another layout on load (reshard/on_load.py), so the
size check only guards files whose contents carry no parallel record. Model shape: the
fields of TransformerConfig that decide a tensor's shape or meaning, and the padded
vocabulary. Both are checked before any tensor is copied, so a mismatch never leaves a
half-loaded model.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from ..errors import CheckpointError

# TransformerConfig fields whose difference makes a checkpoint another model, with their flag.
SHAPE_FIELDS = {
    "num_layers": "--num-layers", "hidden_size": "--hidden-size", "ffn_hidden_size": "--ffn-hidden-size",
    "num_attention_heads": "--num-attention-heads", "kv_channels": "--kv-channels",
    "num_query_groups": "--num-query-groups", "activation": "--swiglu",
    "normalization": "--normalization", "position_embedding_type": "--position-embedding-type",
    "add_bias_linear": "--disable-bias-linear", "add_qkv_bias": "--add-qkv-bias",
    "share_embeddings_and_output_weights": "--untie-embeddings-and-output-weights",
}


def _fix_for_sizes(saved: Tuple[int, int], wanted: Tuple[int, int]) -> str:
    return (f"relaunch with --tensor-model-parallel-size {saved[0]} --pipeline-model-parallel-size {saved[1]}, "
            f"or reshard it first: python tools/change_mp.py <checkpoint> --target-tensor-parallel-size "
            f"{wanted[0]} --target-pipeline-parallel-size {wanted[1]} --output <new checkpoint>")


def check_parallel_sizes(where: str, saved: Optional[Tuple[int, int]], wanted: Tuple[int, int]) -> None:
    if saved is not None and tuple(saved) != tuple(wanted):
        raise CheckpointError(f"{where} was saved with tensor-parallel size {saved[0]} and pipeline-parallel size "
                              f"{saved[1]}, this run uses {wanted[0]} and {wanted[1]}; "
                              f"{_fix_for_sizes(saved, wanted)}.")


def check_virtual_stages(path: str, saved: Dict, run) -> None:
    saved_virtual = saved.get("virtual_pipeline_model_parallel_size")
    wanted_virtual = run.parallel.virtual_pipeline_model_parallel_size
    if saved_virtual != wanted_virtual:
        raise CheckpointError(f"{path} holds {saved_virtual or 1} model chunk(s) per pipeline stage, this run builds "
                              f"{wanted_virtual or 1}; set --num-layers-per-virtual-pipeline-stage as the run that "
                              f"saved it did (its args hold it).")


def check_model(path: str, state: Dict, run, padded_vocab_size: Optional[int]) -> None:
    saved = state.get("model_config") or {}
    wanted = run.model.to_dict()
    differences = [f"{flag} {saved[field]!r} in the checkpoint vs {wanted[field]!r} here"
                   for field, flag in SHAPE_FIELDS.items() if field in saved and saved[field] != wanted[field]]
    saved_vocab = state.get("padded_vocab_size")
    if saved_vocab is not None and padded_vocab_size is not None and saved_vocab != padded_vocab_size:
        differences.append(f"padded vocabulary {saved_vocab} in the checkpoint vs {padded_vocab_size} here "
                           f"(--tokenizer-type/--vocab-file or --make-vocab-size-divisible-by)")
    if differences:
        raise CheckpointError(f"{path} holds another model than this run builds: {'; '.join(differences)}; use the "
                              f"model flags of the run that saved it (its 'args' entry holds them).")


def check_optimizer_layout(path: str, saved: Dict, run) -> None:
    """The distributed optimizer's shards follow the data-parallel size they were cut for."""
    saved_distributed = bool(saved.get("use_distributed_optimizer"))
    if saved_distributed != run.parallel.use_distributed_optimizer or (
            saved_distributed and saved.get("data_parallel_size") != run.parallel.data_parallel_size):
        raise CheckpointError(
            f"the optimizer state in {path} was saved with data-parallel size {saved.get('data_parallel_size')} and "
            f"distributed optimizer {'on' if saved_distributed else 'off'}, this run has "
            f"{run.parallel.data_parallel_size} and {'on' if run.parallel.use_distributed_optimizer else 'off'}; "
            f"resume with the same layout, or add --no-load-optim to load the weights with a fresh optimizer.")
