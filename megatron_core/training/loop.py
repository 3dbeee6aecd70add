"""pretrain(): the whole run on one page, as Megatron-LM's pretrain() without its flags on every line.

    pretrain(spec, argv=None)          # spec: the family's TrainSpec (train_spec.py)

The family's model side comes from models/registry.py by the spec's name: each rank
builds one chunk per virtual pipeline stage with it, rank 0 prints the parameter count
and memory estimate per rank at start, and --dry-run prints them and returns None before
any process group (training/dry_run.py). The spec's forward_step(data_iterator, model,
run) and datasets_provider(run, counts) get the run (a TrainRun: the config dataclasses,
the model options, the tokenizer, the data options), built once here: the loop hands
them what they read. `spec.p2p_config(run) -> P2PConfig` describes what pipeline stages
exchange when it is not a decoder's [seq, micro-batch, hidden] (T5's encoder-decoder stages).

`args` is the validated flag namespace (the loop itself reads the dataclasses of
build_run_config). With --tokenizer-type the tokenizer is built once and
`args.padded_vocab_size` set, as Megatron does. Checkpoints (--load, --save,
--save-interval, the --exit-* flags) are megatron_core.training.checkpointing's
Checkpointer: one load before the data iterators are built (they resume at the
consumed-samples counts), one call after each iteration, one at the end; every file
records the family and its options (checkpoint/model_record.py). A collective that fails
because another rank died or hung becomes one sentence naming that rank (rank_watch.py)
on every rank that is left.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.distributed as dist

from .. import mpu
from ..errors import ConfigError
from .checkpointing import Checkpointer
from .checkpointing.checkpoint_args import apply_checkpoint_args
from .checkpointing.restart_resume import resume_after_restart
from ..pipeline import P2PConfig
from .arguments import build_run_config, parse_args, validate
from .backends import build_training_backend
from .config import RunConfig
from .data_iterators import build_data_iterators as build_split_iterators
from .data_providers import train_valid_test_num_samples
from .dry_run import dry_run, estimate_block, intended_world_size
from .evaluate import evaluate
from .initialize import initialize_distributed, shutdown_distributed
from .lr_schedule import schedule_from_config
from .mfu import detect_peak
from .microbatches import BatchSchedule, num_microbatches
from .rank_watch import RankWatch
from .train_log import TrainingLogger
from .train_spec import TrainRun, TrainSpec, train_run
from .train_step import SkipCounter, train_step
from .vocabulary import resolve_vocabulary


@dataclass
class TrainState:
    """What a checkpoint must restore for the run to continue where it stopped."""
    iteration: int = 0
    consumed_samples: int = 0
    consumed_valid_samples: int = 0


@dataclass
class LoopContext:
    """What a spec's evaluation and after_training hooks get: the run and its live pieces."""
    run: TrainRun
    chunks: List[torch.nn.Module]
    p2p_config: P2PConfig
    forward_step: Callable
    log: TrainingLogger
    checkpoints: Checkpointer
    state: TrainState


def pretrain(spec: TrainSpec, argv: Optional[Sequence[str]] = None) -> Optional[TrainState]:
    args = parse_args(argv, spec.add_arguments)
    resume_after_restart(args)      # a torchrun --max-restarts attempt goes on from --save
    apply_checkpoint_args(args, argv, spec.add_arguments)   # --use-checkpoint-args: before validation
    validate(args, intended_world_size(args))      # a bad flag is one sentence, before any process group
    run = build_run_config(args)
    if args.dry_run:
        dry_run(lambda vocabulary: train_run(spec, args, run, vocabulary).model_shape(), args, run)   # no group
        return None
    if not args.tokenizer_type:    # every model's vocabulary size comes from its tokenizer
        raise ConfigError("--tokenizer-type is required: it sets the vocabulary size and tokenizes the data "
                          "(e.g. BertWordPieceLowerCase with --vocab-file).")
    initialize_distributed(run.parallel, run.training.seed)
    watch = RankWatch.start()     # a rank that dies is named by its peers, not a silent hang
    state = TrainState()
    try:
        vocabulary = resolve_vocabulary(args, run)
        model_run = train_run(spec, args, run, vocabulary)     # what the forward step and the providers read
        if dist.get_rank() == 0:
            block = estimate_block(lambda _: model_run.model_shape(), vocabulary, run)
            if block is not None:
                print(block, flush=True)
        chunks = build_model_chunks(model_run)
        backend = build_training_backend(chunks, run)
        lr_schedule = backend.learning_rate_schedule(schedule_from_config(run.optimizer, run.scheduler,
                                                                          run.training))
        checkpoints = Checkpointer(run, args, chunks, backend, lr_schedule, model_run.family.name,
                                   model_run.model_options, vocabulary.size, vocabulary.padded_size)
        checkpoints.load(state)
        if spec.initialize_weights is not None and spec.initialize_weights(model_run, chunks, state):
            backend.weights_replaced()      # its fp32 masters / ZeRO partitions follow the new weights
        train_iters, valid_iters = build_data_iterators(spec.datasets_provider, model_run, state,
                                                        spec.reads_data_on_every_stage(model_run))
        p2p_config = spec.p2p_config(model_run) if spec.p2p_config is not None else default_p2p_config(run)
        forward_step_func = functools.partial(spec.forward_step, run=model_run)
        batches = BatchSchedule.from_config(run.training, run.parallel.data_parallel_size)
        log = TrainingLogger(
            train_iters=run.training.train_iters, seq_length=run.training.seq_length,
            log_interval=run.logging.log_interval, world_size=run.parallel.world_size,
            peak=detect_peak(run.logging.peak_tflops), flops_per_token=_flops_per_token(chunks[0], run),
            is_logging_rank=dist.get_rank() == dist.get_world_size() - 1,
            tensorboard_dir=run.logging.tensorboard_dir, start_iteration=state.iteration)
        log.print(backend.describe())
        skips = SkipCounter(run.training.max_skipped_iterations)
        eval_batches = num_microbatches(run.training.global_batch_size, run.training.micro_batch_size,
                                        run.parallel.data_parallel_size)   # the full batch, after any ramp-up
        context = LoopContext(model_run, backend.modules, p2p_config, forward_step_func, log, checkpoints, state)
        extra_points = spec.evaluation_iterations(model_run) if spec.evaluation_iterations else set()

        def evaluates_at(iteration: int) -> bool:
            if spec.evaluation is not None:
                return bool(run.training.eval_interval) and iteration % run.training.eval_interval == 0 \
                    or iteration in extra_points
            return bool(valid_iters and run.training.eval_iters) and iteration % run.training.eval_interval == 0

        def validate_now(at: str) -> None:
            paused = log.pause_clock()
            if spec.evaluation is not None:
                spec.evaluation(context, at)
            else:
                losses = evaluate(forward_step_func, valid_iters, backend.modules, run.training.eval_iters,
                                  eval_batches, p2p_config)
                state.consumed_valid_samples += run.training.eval_iters * run.training.global_batch_size
                log.validation(at, state.iteration, losses)
            log.resume_clock(paused)

        while state.iteration < run.training.train_iters:
            global_batch = batches.global_batch_size_at(state.consumed_samples)
            learning_rate = lr_schedule.lr
            outcome = train_step(forward_step_func, train_iters, backend.modules, backend, lr_schedule,
                                 batches.num_microbatches_at(state.consumed_samples), global_batch, p2p_config)
            state.iteration += 1
            state.consumed_samples += global_batch
            warning = skips.record(state.iteration, outcome)
            log.after_step(state.iteration, state.consumed_samples, global_batch, learning_rate, outcome, skips,
                           warning)
            if evaluates_at(state.iteration):
                validate_now(f"iteration {state.iteration}")
            if checkpoints.after_iteration(state):    # saves every --save-interval; True at an --exit-* condition
                break
        else:
            ends_without = spec.evaluation is None and valid_iters and run.training.eval_iters
            if (ends_without or spec.evaluation is not None) and not evaluates_at(state.iteration):
                validate_now("the end of training for val data")
            checkpoints.at_end(state)    # as Megatron: after the last evaluation
            if spec.after_training is not None:
                spec.after_training(context)
        log.close(skips)
        return state
    except Exception as error:
        watch.explain(error, state.iteration + 1)   # RankFailure when a peer stopped
        raise
    finally:
        watch.stop()
        shutdown_distributed()


def build_model_chunks(model_run: TrainRun) -> List[torch.nn.Module]:
    """This rank's chunks, one per virtual pipeline stage, on this rank's device."""
    virtual = mpu.get_virtual_pipeline_model_parallel_world_size()
    device = mpu.layers.default_device()
    chunks = []
    for virtual_rank in range(virtual or 1):
        stage = mpu.get_pipeline_stage(virtual_rank if virtual else None)
        chunks.append(model_run.build_model(stage).to(device))
    return chunks


def build_data_iterators(datasets_provider: Callable, model_run: TrainRun, state: TrainState, every_stage: bool):
    """(train, valid) micro-batch iterators of this process (data_iterators.py: Megatron's sample
    order, only the first TP rank reads, one per model chunk with virtual stages)."""
    run = model_run.config
    datasets = list(datasets_provider(model_run, train_valid_test_num_samples(run.training)))
    iterators = build_split_iterators(datasets, run.training.micro_batch_size, state.consumed_samples,
                                      state.consumed_valid_samples, every_stage=every_stage,
                                      num_workers=run.data.num_workers, seed=run.training.seed)
    # Every rank must agree on whether to evaluate (it is a pipeline collective), so that
    # follows the dataset, not this rank's iterator (None on stages that read no data).
    valid = _per_chunk(iterators.valid) if len(datasets) > 1 and datasets[1] is not None else None
    return _per_chunk(iterators.train), valid


def _per_chunk(iterator) -> list:
    """The loop hands the schedules one iterator (or None) per chunk."""
    return iterator if isinstance(iterator, list) else [iterator]


def default_p2p_config(run: RunConfig) -> P2PConfig:
    """A decoder-only stage sends [seq (/tp with sequence parallelism), micro-batch, hidden]."""
    seq = run.training.seq_length
    if run.model.sequence_parallel_active:
        seq //= run.parallel.tensor_model_parallel_size
    return P2PConfig(tensor_shape=[seq, run.training.micro_batch_size, run.model.hidden_size],
                     dtype=run.model.params_dtype)


def _flops_per_token(chunk, run: RunConfig) -> Optional[int]:
    flops = getattr(chunk, "training_flops_per_token", None)
    return flops(run.training.seq_length) if flops is not None else None
