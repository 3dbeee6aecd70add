"""Resharding checkpoints: any TP x PP (x DP, optimizer included) to any other, from the
sharding map a checkpoint carries, streaming (one source slice and one output tensor in
memory at a time), with no model and no process group.

  slices.py           one target shard out of the source shards, by index arithmetic
  lazy_files.py       source files: index unpickled once (mmap), bytes read with explicit file reads
  source.py           a saved checkpoint: files, sizes, maps, tensors and optimizer state by key
  targets.py          a target rank's weight and per-parameter optimizer state of one key
  stages.py           the target pipeline chunks' maps, derived from the source maps
  streaming_writer.py a torch.save file written one tensor at a time
  rewrite.py          tools/change_mp.py's work: a whole checkpoint at other sizes
  on_load.py          --load at other sizes: each rank reads its own slices
  engine_source.py    a DeepSpeed engine's checkpoint: where its ZeRO files keep each parameter
  torch_dist_source.py  Megatron-LM's torch_dist checkpoint as a source; open_source picks the reader
(The whole model's state dict of a checkpoint, for converters: ../saved_model.py, on source.py.)
"""
from ..contents import PER_PARAMETER
from .on_load import (describe, needs_resharding, pretrained_chunk_states, resharded_chunk_states,
                      saved_padded_vocab_size)
from .engine_source import written_by_engine
from .source import SavedCheckpoint
from .torch_dist_source import checkpoint_iteration_path, open_source, torch_dist_directory

__all__ = ["PER_PARAMETER", "SavedCheckpoint", "describe", "needs_resharding", "pretrained_chunk_states",
           "resharded_chunk_states",
           "written_by_engine", "open_source", "checkpoint_iteration_path", "torch_dist_directory",
           "saved_padded_vocab_size"]
