"""The training run's settings as dataclasses: flags fill them at the edge, code below reads them.

Field names are Megatron-LM's argument names (`args.micro_batch_size` fills
`TrainingConfig.micro_batch_size`), so `build(cls, args)` needs a rename only where a field
means something else than the flag it comes from. Nothing in here reads argparse; see
`training/arguments.py` for the flags, their checks and the derived values.

Learning-rate and weight-decay schedules count *samples*, as Megatron's scheduler does: an
iteration-based run converts its `--lr-*-iters` with the global batch size (see
`training/lr_schedule.py`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from ..transformer.config import TransformerConfig


def build(cls, args, renames: Optional[dict] = None):
    """`cls` filled from the attributes of `args` of the same name (or renamed: field -> attribute)."""
    renames = renames or {}
    names = {f.name: renames.get(f.name, f.name) for f in dataclasses.fields(cls) if f.init}
    return cls(**{name: getattr(args, attr) for name, attr in names.items() if hasattr(args, attr)})


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    # Interleaved 1F1B: layers per model chunk (None: one chunk per stage).
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    # Derived by validation: chunks per stage (None without interleaving).
    virtual_pipeline_model_parallel_size: Optional[int] = None
    # Encoder-decoder pipelines: the first decoder stage (None: no split).
    pipeline_model_parallel_split_rank: Optional[int] = None
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    # Elements per data-parallel gradient bucket (None: Megatron's 40M, or 1M per DP rank if more).
    ddp_bucket_size: Optional[int] = None
    # "nccl" or "gloo"; None picks nccl when CUDA is available, gloo otherwise.
    distributed_backend: Optional[str] = None
    distributed_timeout_minutes: float = 10
    world_size: int = 1

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // (self.tensor_model_parallel_size * self.pipeline_model_parallel_size)

    def backend(self, cuda_available: Optional[bool] = None) -> str:
        if self.distributed_backend is not None:
            return self.distributed_backend
        cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
        return "nccl" if cuda else "gloo"


@dataclass
class TrainingConfig:
    micro_batch_size: int = 1
    global_batch_size: int = 1
    # (start global batch, increment, ramp-up samples), Megatron's --rampup-batch-size.
    rampup_batch_size: Optional[Tuple[int, int, int]] = None
    seq_length: int = 1024
    # The run's length: iterations, or samples (a sample-based run also gets its derived
    # train_iters, the loop's iteration count; train_samples set means sample-based).
    train_iters: Optional[int] = None
    train_samples: Optional[int] = None
    eval_interval: int = 1000
    eval_iters: int = 100
    seed: int = 1234
    # Stop with one sentence after this many consecutive skipped (overflowed) steps.
    max_skipped_iterations: Optional[int] = None
    # Save (with --save) and stop: after an iteration that is a multiple of exit_interval, once
    # exit_duration_in_mins have passed, or on SIGTERM with exit_signal_handler.
    exit_interval: Optional[int] = None
    exit_duration_in_mins: Optional[float] = None
    exit_signal_handler: bool = False


@dataclass
class OptimizerConfig:
    optimizer: str = "adam"          # "adam" (decoupled weight decay, i.e. AdamW) or "sgd"
    lr: float = 1e-4                 # peak learning rate
    min_lr: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    sgd_momentum: float = 0.9
    clip_grad: float = 1.0           # global L2 norm; 0 disables clipping


@dataclass
class SchedulerConfig:
    lr_decay_style: str = "linear"   # constant, linear, cosine, inverse-square-root, WSD
    lr_wsd_decay_style: str = "exponential"   # exponential, linear, cosine, minus_sqrt
    lr_decay_iters: Optional[int] = None
    lr_decay_samples: Optional[int] = None
    lr_wsd_decay_iters: Optional[int] = None
    lr_wsd_decay_samples: Optional[int] = None
    lr_warmup_fraction: Optional[float] = None
    lr_warmup_iters: int = 0
    lr_warmup_samples: int = 0
    lr_warmup_init: float = 0.0
    # Weight decay from start to end over the run (constant: both equal --weight-decay).
    start_weight_decay: Optional[float] = None
    end_weight_decay: Optional[float] = None
    weight_decay_incr_style: str = "constant"  # constant, linear, cosine
    # On resume a schedule value of the flags that differs from the checkpoint's stops the run,
    # unless one of these says whose wins (training/checkpointing/resumed_schedule.py).
    override_opt_param_scheduler: bool = False          # the flags'
    use_checkpoint_opt_param_scheduler: bool = False    # the checkpoint's


@dataclass
class PrecisionConfig:
    fp16: bool = False
    bf16: bool = False
    # A fixed loss scale; None means dynamic scaling (fp16 only).
    loss_scale: Optional[float] = None
    initial_loss_scale: float = 2.0 ** 32
    min_loss_scale: float = 1.0
    loss_scale_window: int = 1000
    hysteresis: int = 2

    @property
    def params_dtype(self) -> torch.dtype:
        return torch.float16 if self.fp16 else torch.bfloat16 if self.bf16 else torch.float32


@dataclass
class DataConfig:
    # A prefix, or weight-prefix pairs: ["0.3", "data/a_text_document", "0.7", "data/b_text_document"].
    data_path: Optional[List[str]] = None
    split: str = "969, 30, 1"
    data_cache_path: Optional[str] = None
    tokenizer_type: Optional[str] = None
    # --vocab-size: NullTokenizer's ids (others: checked against the tokenizer's size)
    vocab_size: Optional[int] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    tokenizer_model: Optional[str] = None
    vocab_extra_ids: int = 0
    num_workers: int = 2


@dataclass
class LoggingConfig:
    log_interval: int = 100
    tensorboard_dir: Optional[str] = None
    # Dense bf16/fp16 peak of one device for MFU (None: looked up from the device name).
    peak_tflops: Optional[float] = None


@dataclass
class CheckpointConfig:
    save: Optional[str] = None
    load: Optional[str] = None
    save_interval: Optional[int] = None
    ckpt_format: str = "megatron"          # the layout written: "megatron" or "deepspeed"
    finetune: bool = False                 # load the weights only; iteration and counters start at 0
    no_load_optim: bool = False            # keep a fresh optimizer and lr schedule (the loss scaler still loads)
    no_load_rng: bool = False
    exit_on_missing_checkpoint: bool = False
    keep_last: Optional[int] = None        # remove all but the newest N checkpoints, after each complete save
    # (N >= 2 also lets --load fall back to the newest intact checkpoint when the newest is damaged)
    no_verify_checkpoint: bool = False     # --load checks the files' sizes against the manifest, not their checksums
    use_checkpoint_args: bool = False      # model shape from the --load checkpoint (command line wins)


@dataclass
class DeepSpeedConfig:
    # --deepspeed: train through deepspeed.initialize (training/backends/deepspeed.py).
    deepspeed: bool = False
    deepspeed_config: Optional[str] = None      # the ds.json path, --deepspeed_config
    # ds.json checked against the flags and completed from them (deepspeed_config.py); set by validate.
    resolved: Optional[dict] = None


@dataclass
class RunConfig:
    """Everything a training run needs, built once from the flags."""
    model: TransformerConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    # Learned position table size (None for models without one is fine).
    max_position_embeddings: Optional[int] = None
