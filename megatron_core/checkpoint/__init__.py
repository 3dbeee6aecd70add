"""The checkpoint format layer: what is on disk and how it is read and written.

It knows no training loop and no model code; it imports only errors, atomic_files, mpu
(layout, sharding map, ranks) and transformer/config. One idea per file:
  megatron_layout.py   iter_NNNNNNN/mp_rank_XX[_YYY]/model_optim_rng.pt + latest_checkpointed_iteration.txt
  deepspeed_layout.py  <tag>/mp_rank_XX_model_states.pt (+ zero_pp_rank_D_..._optim_states.pt) + latest
  layout_files.py      the native backend's files, written and read through a layout
  torch_dist_files.py  --ckpt-format torch_dist: the loop's saves in Megatron-LM's torch_dist format
  deepspeed_engine.py  the DeepSpeed backend's: engine.save_checkpoint/load_checkpoint, our state as client_state
  formats.py           --ckpt-format, and which layout a directory holds
  contents.py          what a rank's file holds (model chunks, optimizer, scaler, scheduler, RNG, args, ...)
  rng_state.py         every random stream as weights_only-safe values
  run_record.py        the flags as plain values
  model_record.py      the model family and its builder options; a legacy file's family guessed once
  file_io.py           weights_only reads; writes through atomic_files (temporary, fsync, rename)
  checksums.py         a file's size and crc32 per 64 MiB block, taken while it is written
  manifest.py          checkpoint_manifest.json: every file a save wrote; what a load finds damaged
  compatibility.py     the sentence for a checkpoint of another model or parallel layout
  saved_model.py       the saved-checkpoint reader (any layout, full tensors on demand)
  weights_checkpoint.py  a weights-only checkpoint of a serial model, at any TP x PP
  reshard/             any layout to any layout, streamed (change_mp, resharding on load)
  megatron_lm/         Megatron-LM's own formats, read and written without megatron
                       (torch_dist.py: --ckpt-format torch_dist through torch.distributed.checkpoint)
"""
