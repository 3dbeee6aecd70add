"""A GPT with virtual pipeline (interleaved) chunks, built and saved by NVIDIA's megatron-core
as Megatron-LM does, in both checkpoint formats at once.

    ref = save_virtual_pipeline_checkpoints("gpt", torch_dir, dist_dir)   # 2 ranks: PP=2, 2 chunks each
    ref.logits["lm"]        # [2, 16, 128]: the chunks' forward in model order
    ref.args                # the torch files' args (a dict)

Megatron-LM 0.16.1's get_model builds one model per virtual stage i with vp_stage=i: the
embedding on the first pipeline rank's chunk 0, the head on the last rank's last chunk; model
chunk j of pipeline rank r is stage j * PP + r of the model, and megatron-core numbers its
layers from get_transformer_layer_offset(config, vp_stage). generate_state_dict then writes
them as model0, model1, ...:

  torch       each chunk's state_dict_for_save_checkpoint(): its layers numbered from 0 in the
              chunk, so only the reader knows where they go
  torch_dist  each chunk's sharded_state_dict(): megatron-core itself puts every layer at its
              global index (the independent reference for the torch files)

The args are those of `--num-layers-per-virtual-pipeline-stage` (arguments.py computes
virtual_pipeline_model_parallel_size from it and keeps both; PP=2 needs the default
overlap_p2p_comm). megatron-core starts every norm at 1 and every bias at 0, the same in every
layer, so each layer's tensors are then shifted by its global layer_number as megatron-core
counts it: no two layers hold equal tensors, and a layer read into the wrong place shows.
TP is 1.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .megatron_cpu import start_ranks, stop_ranks
from .megatron_lm import SavedReference, hand_back, run_megatron, sharded_metadata, sharded_rng_state
from .megatron_lm_args import megatron_lm_args
from .megatron_lm_files import file_state_dict, save_torch_dist, save_torch_format
from .megatron_lm_models import BATCH, HIDDEN, SEQ, build_model, sample_batch
from .megatron_lm_rng import megatron_rng_state

PP = 2


def virtual_args(args, num_layers: int, virtual: int):
    """Megatron-LM's args after `--num-layers N --num-layers-per-virtual-pipeline-stage K`."""
    vars(args).update(num_layers=num_layers, encoder_num_layers=num_layers,
                      num_layers_per_virtual_pipeline_stage=num_layers // (PP * virtual),
                      virtual_pipeline_model_parallel_size=virtual, num_virtual_stages_per_pipeline_rank=None,
                      pipeline_model_parallel_layout=None, overlap_p2p_comm=True, align_param_gather=True)
    return args


@torch.no_grad()
def _make_layers_distinct(chunks) -> None:
    for chunk in chunks:
        norms = [(0, chunk.decoder.final_layernorm)] if chunk.decoder.final_layernorm is not None else []
        for number, module in [(layer.layer_number, layer) for layer in chunk.decoder.layers] + norms:
            for parameter in module.parameters():
                wave = torch.sin(torch.arange(parameter.numel(), dtype=torch.float32) * 0.37 + number)
                parameter.add_(0.02 * (number + 1) * wave.view_as(parameter))


@torch.no_grad()
def chunk_logits(name: str, chunks) -> dict | None:
    """The full-vocabulary logits of the chunks run in model order (the last rank returns them):
    hidden states go to the next pipeline rank by gloo send/recv, from the last rank back to the
    first for its next chunk, as the interleaved schedule passes them for a forward-only step."""
    from megatron.core import parallel_state

    rank = parallel_state.get_pipeline_model_parallel_rank()
    batch, output = sample_batch(name), None
    for index, chunk in enumerate(chunks):
        chunk.eval()
        if index > 0 or rank > 0:
            hidden = torch.empty(SEQ, BATCH, HIDDEN)
            dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
            chunk.set_input_tensor(hidden)
        output = chunk(**batch)
        if index < len(chunks) - 1 or rank < PP - 1:
            dist.send(output.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
    return {"lm": output} if rank == PP - 1 else None


def _save_rank(name, torch_dir, out_dir, tp, pp, dist_dir, num_layers, virtual, seed, iteration):
    from megatron.core import parallel_state

    start_ranks(tp, pp, seed, virtual=virtual)
    try:
        chunks = [build_model(name, tp, pp, num_layers, virtual, vp_stage) for vp_stage in range(virtual)]
        _make_layers_distinct(chunks)
        pp_rank = parallel_state.get_pipeline_model_parallel_rank()
        rng_state = megatron_rng_state(seed + 100 * pp_rank, 0)
        common = dict(tp=tp, pp=pp, rank=dist.get_rank(), iteration=iteration, seed=seed, with_optimizer=False)
        args = virtual_args(megatron_lm_args(name, fmt="torch", save_dir=torch_dir, **common), num_layers, virtual)
        save_torch_format(torch_dir, file_state_dict(args, iteration, [c.state_dict_for_save_checkpoint()
                                                                       for c in chunks], rng_state))
        dist_args = virtual_args(megatron_lm_args(name, fmt="torch_dist", save_dir=dist_dir, **common), num_layers,
                                 virtual)
        save_torch_dist(dist_dir, file_state_dict(dist_args, iteration,
                                                  [c.sharded_state_dict(metadata=sharded_metadata()) for c in chunks],
                                                  sharded_rng_state(rng_state, tp, pp)))
        hand_back(out_dir, SavedReference(chunk_logits(name, chunks), vars(args)))
    finally:
        stop_ranks()


def save_virtual_pipeline_checkpoints(name: str, torch_dir: str, dist_dir: str, *, num_layers: int = 4,
                                      virtual: int = 2, seed: int = 1234, iteration: int = 7) -> SavedReference:
    if name not in ("gpt", "llama") or num_layers % (PP * virtual):
        raise ValueError(f"the harness saves gpt or llama with layers split evenly over {PP} ranks x {virtual} "
                         f"chunks, not {name!r} with {num_layers} layers")
    return run_megatron(_save_rank, name, torch_dir, 1, PP, dist_dir, num_layers, virtual, seed, iteration)
