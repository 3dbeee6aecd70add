"""Megatron-LM's command-line flags, their checks, and the config dataclasses they fill.

    args = parse_args(sys.argv[1:], extra_args_provider=add_my_flags)
    validate(args, world_size)        # before any process group: a bad flag is one sentence
    run = build_run_config(args)      # RunConfig: TransformerConfig + training dataclasses

Flag names, defaults and meanings are Megatron-LM's (megatron/training/arguments.py), so
its launch scripts run unchanged; the few additions are marked "(ours)". Only entry points
and tools call this module; everything below them takes the dataclasses.

`validate` fills what Megatron derives: the data-parallel size, --global-batch-size
(micro x DP when absent), --ffn-hidden-size (4h, or Megatron's 8h/3 rounded down to a
multiple of 64 with --swiglu), --kv-channels, --max-position-embeddings (= --seq-length
when absent), the virtual pipeline size, constant start/end weight decay, the parameter
dtype, and --train-iters of a sample-based run.
"""
from __future__ import annotations

import argparse
import importlib.util
from typing import Callable, List, Optional

import torch

from ..data.blended_dataset import parse_data_path
from ..data.splits import parse_split
from ..data.tokenizers import TOKENIZER_TYPES
from ..errors import ConfigError
from ..transformer.config import TransformerConfig
from .config import (CheckpointConfig, DataConfig, DeepSpeedConfig, LoggingConfig, OptimizerConfig, ParallelConfig,
                     PrecisionConfig, RunConfig, SchedulerConfig, TrainingConfig, build)
from .deepspeed_config import FlagSettings, read_deepspeed_config, resolve_deepspeed_config
from .loss_scaler import build_loss_scaler
from .lr_schedule import DECAY_STYLES, WD_INCR_STYLES, WSD_DECAY_STYLES, schedule_from_config
from .microbatches import BatchSchedule


def add_megatron_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("network size")
    g.add_argument("--num-layers", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--ffn-hidden-size", type=int, default=None,
                   help="MLP width; 4 * hidden-size if not given (with --swiglu: 8/3 * hidden-size, "
                        "rounded down to a multiple of 64).")
    g.add_argument("--num-attention-heads", type=int, default=None)
    g.add_argument("--kv-channels", type=int, default=None,
                   help="Per-head size; hidden-size // num-attention-heads if not given.")
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument("--num-query-groups", type=int, default=1)
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="Size of the learned position table; --seq-length if not given.")
    g.add_argument("--position-embedding-type", default="learned_absolute", choices=["learned_absolute", "rope"])
    g.add_argument("--rotary-percent", type=float, default=1.0)
    g.add_argument("--rotary-interleaved", action="store_true")
    g.add_argument("--rotary-base", type=int, default=10000)
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--normalization", default="LayerNorm", choices=["LayerNorm", "RMSNorm"])
    g.add_argument("--norm-epsilon", type=float, default=1e-5)
    g.add_argument("--apply-residual-connection-post-layernorm", action="store_true")
    g.add_argument("--layernorm-position", default="pre", choices=["pre", "post"],
                   help="(ours) pre: x + f(norm(x)), Megatron's layers (GPT, MegatronBERT as Erlangshen-MegatronBert, "
                        "Zhouwenwang); post: norm(x + f(x)), the original BERT (HF BertModel, RoFormer).")
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--openai-gelu", action="store_true",
                   help="GELU's tanh approximation (GPT-2's gelu_new), as Megatron-LM's flag.")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--disable-bias-linear", action="store_false", dest="add_bias_linear")
    g.add_argument("--add-qkv-bias", action="store_true")

    g = parser.add_argument_group("regularization")
    g.add_argument("--attention-dropout", type=float, default=0.1)
    g.add_argument("--hidden-dropout", type=float, default=0.1)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--start-weight-decay", type=float, default=None)
    g.add_argument("--end-weight-decay", type=float, default=None)
    g.add_argument("--weight-decay-incr-style", default="constant", choices=list(WD_INCR_STYLES))
    g.add_argument("--clip-grad", type=float, default=1.0, help="Global L2 gradient norm clip (0: off).")
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-08)
    g.add_argument("--sgd-momentum", type=float, default=0.9)

    g = parser.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=None)
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="Samples per step; micro-batch-size * data-parallel size if not given.")
    g.add_argument("--rampup-batch-size", type=int, nargs=3, default=None, metavar=("START", "INCR", "SAMPLES"),
                   help="Grow the global batch from START by INCR over SAMPLES samples (sample-based runs).")
    g.add_argument("--recompute-activations", action="store_true",
                   help="Same as --recompute-granularity selective.")
    g.add_argument("--recompute-granularity", default=None, choices=["full", "selective"])
    g.add_argument("--recompute-method", default=None, choices=["uniform", "block"])
    g.add_argument("--recompute-num-layers", type=int, default=None)
    g.add_argument("--train-iters", type=int, default=None)
    g.add_argument("--train-samples", type=int, default=None)
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    g.add_argument("--max-skipped-iterations", type=int, default=None,
                   help="(ours) Stop after this many consecutive skipped (overflowed) iterations.")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="(ours) Dense bf16/fp16 peak TFLOP/s of one device, for MFU; looked up from the "
                        "GPU name if not given.")

    g = parser.add_argument_group("initialization")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--init-method-std", type=float, default=0.02)

    g = parser.add_argument_group("learning rate")
    g.add_argument("--lr", type=float, default=None, help="Peak learning rate.")
    g.add_argument("--lr-decay-style", default="linear", choices=list(DECAY_STYLES))
    g.add_argument("--lr-wsd-decay-style", default="exponential", choices=list(WSD_DECAY_STYLES))
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--lr-decay-samples", type=int, default=None)
    g.add_argument("--lr-wsd-decay-iters", type=int, default=None)
    g.add_argument("--lr-wsd-decay-samples", type=int, default=None)
    g.add_argument("--lr-warmup-fraction", type=float, default=None)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-samples", type=int, default=0)
    g.add_argument("--lr-warmup-init", type=float, default=0.0)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--override-opt_param-scheduler", action="store_true",
                   help="On resume, take the learning-rate schedule (--lr, --min-lr, warmup, decay length and "
                        "style, weight decay) from these flags instead of the checkpoint's.")
    g.add_argument("--use-checkpoint-opt_param-scheduler", action="store_true",
                   help="On resume, keep the checkpoint's learning-rate schedule and ignore these flags' values "
                        "for it. Without either flag a schedule value that differs from the checkpoint's stops "
                        "the run.")

    g = parser.add_argument_group("checkpointing")
    g.add_argument("--save", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--ckpt-format", default="megatron", choices=["megatron", "deepspeed", "torch_dist"],
                   help="The format --save writes; --load detects the one it finds. megatron: "
                        "Megatron-LM's torch layout (mp_rank_XX files); deepspeed: DeepSpeed's layout; "
                        "torch_dist: Megatron-LM's torch.distributed.checkpoint directory (weights, "
                        "counters and scheduler; no optimizer state yet). With --deepspeed the engine "
                        "writes DeepSpeed's layout.")
    g.add_argument("--finetune", action="store_true",
                   help="Load the weights only: iteration, optimizer, scheduler and RNG start afresh.")
    g.add_argument("--no-load-optim", action="store_true",
                   help="Do not load the optimizer and lr scheduler (the fp16 loss scaler still loads).")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--exit-on-missing-checkpoint", action="store_true",
                   help="With --load: a directory without a checkpoint is an error instead of a fresh start.")
    g.add_argument("--exit-interval", type=int, default=None,
                   help="Save (with --save) and exit after an iteration that is a multiple of this.")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="Save (with --save) and exit once training has run this many minutes.")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="On SIGTERM, save (with --save) after the current iteration and exit cleanly on every rank.")
    g.add_argument("--keep-last", type=int, default=None,
                   help="(ours) Keep only the newest N checkpoints in --save; older ones go after a complete save. "
                        "With N >= 2, --load skips a damaged newest checkpoint (one printed line) and loads the "
                        "newest intact one.")
    g.add_argument("--no-verify-checkpoint", action="store_true",
                   help="(ours) --load checks the checkpoint's files against its manifest by size only, not by "
                        "checksum (a huge checkpoint on a slow disk).")
    g.add_argument("--use-checkpoint-args", action="store_true",
                   help="Take the model shape and parallel sizes from the --load checkpoint; flags given on the "
                        "command line win.")

    g = parser.add_argument_group("mixed precision")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--loss-scale", type=float, default=None, help="Fixed loss scale; dynamic if not given.")
    g.add_argument("--initial-loss-scale", type=float, default=2.0 ** 32)
    g.add_argument("--min-loss-scale", type=float, default=1.0)
    g.add_argument("--loss-scale-window", type=float, default=1000)
    g.add_argument("--hysteresis", type=int, default=2)

    g = parser.add_argument_group("fused kernels")
    g.add_argument("--no-fused-kernels", "--no-masked-softmax-fusion", "--no-bias-gelu-fusion",
                   "--no-bias-dropout-fusion", "--no-rope-fusion", "--no-persist-layer-norm",
                   action="store_false", dest="fused_kernels",
                   help="(ours) Run the torch fallbacks instead of the fused CUDA kernels (softmax, norms, "
                        "bias-GeLU, bias-dropout-add, rotary). Megatron's per-kernel --no-*-fusion flags are "
                        "accepted as aliases and turn all of them off.")

    g = parser.add_argument_group("distributed")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--distributed-backend", default=None, choices=["nccl", "gloo"],
                   help="nccl with CUDA, gloo without, if not given.")
    g.add_argument("--distributed-timeout-minutes", type=float, default=10,
                   help="How long a collective waits for a peer before the run stops naming the rank that "
                        "stopped responding; a fraction such as 0.1 (6 s) suits tests.")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--ddp-bucket-size", type=int, default=None,
                   help="Elements per data-parallel gradient bucket; max(40M, 1M x data-parallel size) if not given.")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--deepspeed", action="store_true",
                   help="Train through deepspeed.initialize with --deepspeed_config (DeepSpeed's flag names).")
    g.add_argument("--deepspeed_config", "--deepspeed-config", default=None, dest="deepspeed_config",
                   help="The DeepSpeed config JSON: ZeRO stage, offload; batch sizes, precision, optimizer and "
                        "clipping must agree with the flags and are filled from them when absent.")
    # DeepSpeed's launcher passes --local_rank; torchrun sets LOCAL_RANK instead.
    g.add_argument("--local-rank", "--local_rank", type=int, default=None, dest="local_rank")

    g = parser.add_argument_group("validation")
    g.add_argument("--eval-iters", type=int, default=100)
    g.add_argument("--eval-interval", type=int, default=1000)

    g = parser.add_argument_group("data and dataloader")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="A dataset prefix, or weight-prefix pairs: 0.3 data/a_text_document 0.7 data/b_text_document.")
    g.add_argument("--split", default="969, 30, 1")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--seq-length", type=int, default=None)
    g.add_argument("--num-workers", type=int, default=2)
    g.add_argument("--tokenizer-type", default=None, choices=list(TOKENIZER_TYPES))
    g.add_argument("--vocab-file", default=None)
    g.add_argument("--merge-file", default=None)
    g.add_argument("--vocab-extra-ids", type=int, default=0)
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--vocab-size", type=int, default=None,
                   help="The tokenizer's vocabulary size before padding: lets --dry-run run without the tokenizer "
                        "files; a real run checks it against the tokenizer.")

    g = parser.add_argument_group("dry run (ours)")
    g.add_argument("--dry-run", action="store_true",
                   help="Parse and validate the flags (and the DeepSpeed config), print the parameter count and "
                        "the memory estimate per rank, and exit: no process group, no weights.")
    g.add_argument("--dry-run-world-size", type=int, default=None,
                   help="The world size a --dry-run checks the layout against; the launcher's WORLD_SIZE if not "
                        "given, else tensor x pipeline parallel size.")
    return parser


def add_encoder_decoder_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """An encoder-decoder's flags (T5; Megatron-LM's names): the stacks' depths and the stage
    where the pipeline passes from the encoder to the decoder. `validate` then fills --num-layers
    and --seq-length from the encoder's flags and checks each stack's split over its stages
    (`args.encoder_decoder`, set here, tells it to)."""
    g = parser.add_argument_group("encoder-decoder")
    g.add_argument("--encoder-num-layers", type=int, default=None, help="Encoder layers (same as --num-layers).")
    g.add_argument("--decoder-num-layers", type=int, default=None, help="Decoder layers; the encoder's if not given.")
    g.add_argument("--pipeline-model-parallel-split-rank", type=int, default=None,
                   help="With pipeline parallelism: the first decoder stage (stages below it hold the encoder).")
    g.add_argument("--no-t5-lm-head-bias", dest="t5_lm_head_bias", action="store_false",
                   help="Build a tied, learned-position T5 without the vocabulary bias Megatron-LM's T5 head adds.")
    parser.set_defaults(encoder_decoder=True)
    return parser


def parse_args(argv: Optional[List[str]] = None,
               extra_args_provider: Optional[Callable[[argparse.ArgumentParser], argparse.ArgumentParser]] = None
               ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="megatron_core training", allow_abbrev=False)
    add_megatron_arguments(parser)
    if extra_args_provider is not None:
        parser = extra_args_provider(parser) or parser
    return parser.parse_args(argv)


# --- validation ------------------------------------------------------------------------------

def default_args_record() -> dict:
    """Every flag of every entry point at its default, as a checkpoint records them (the converters
    write it under a converted model's own values, so an entry point resumes from it)."""
    from ..checkpoint.run_record import args_to_dict
    from .data_options import add_data_options_arguments

    def extra(parser):
        add_data_options_arguments(parser)
        return add_encoder_decoder_arguments(parser)
    return args_to_dict(parse_args([], extra))


def _positive(args, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")


def _require(args, *names: str) -> None:
    for name in names:
        if getattr(args, name) is None:
            raise ConfigError(f"--{name.replace('_', '-')} is required.")


def validate(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Check every flag against the others and `world_size`; fill the derived values in place.

    Runs before any process-group work, so a launch with impossible flags stops with one
    sentence (ConfigError) on every rank instead of hanging in a collective.
    """
    if args.fp16 and args.bf16:
        raise ConfigError("--fp16 and --bf16 were both given; choose one precision.")
    args.params_dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32

    if getattr(args, "encoder_decoder", False):
        _fill_encoder_decoder(args)
    _validate_model(args)
    _validate_parallel(args, world_size)
    _validate_batch_and_length(args)
    _validate_optimizer(args)
    _validate_logging_and_data(args)
    _validate_deepspeed(args)
    return args


def _fill_encoder_decoder(args) -> None:
    """Megatron's T5 reading: --encoder-num-layers is --num-layers, --encoder-seq-length is
    --seq-length, the decoder defaults to the encoder's depth, and the learned position table
    covers the longer of the two sequences."""
    for encoder_flag, flag in (("encoder_num_layers", "num_layers"), ("encoder_seq_length", "seq_length")):
        encoder_value, value = getattr(args, encoder_flag, None), getattr(args, flag)
        if encoder_value is not None and value is not None and encoder_value != value:
            raise ConfigError(f"--{encoder_flag.replace('_', '-')} {encoder_value} and --{flag.replace('_', '-')} "
                              f"{value} disagree; give only one of them.")
        if value is None:
            setattr(args, flag, encoder_value)
    _positive(args, "decoder_num_layers")
    if args.decoder_num_layers is None:
        args.decoder_num_layers = args.num_layers
    decoder_seq_length = getattr(args, "decoder_seq_length", None)
    if decoder_seq_length is None or args.seq_length is None:
        return
    if args.max_position_embeddings is None:
        args.max_position_embeddings = max(args.seq_length, decoder_seq_length)
    if args.position_embedding_type == "learned_absolute" and args.max_position_embeddings < decoder_seq_length:
        raise ConfigError(f"--max-position-embeddings {args.max_position_embeddings} is shorter than "
                          f"--decoder-seq-length {decoder_seq_length}; raise it to at least {decoder_seq_length}.")


def _validate_model(args) -> None:
    _require(args, "num_layers", "hidden_size", "num_attention_heads", "seq_length")
    _positive(args, "num_layers", "hidden_size", "num_attention_heads", "seq_length", "ffn_hidden_size",
              "kv_channels", "num_query_groups", "max_position_embeddings", "make_vocab_size_divisible_by")
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.position_embedding_type == "learned_absolute" and args.max_position_embeddings < args.seq_length:
        raise ConfigError(f"--max-position-embeddings {args.max_position_embeddings} is shorter than --seq-length "
                          f"{args.seq_length}; raise it to at least {args.seq_length}.")
    if args.kv_channels is None:
        if args.hidden_size % args.num_attention_heads != 0:
            raise ConfigError(f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads "
                              f"{args.num_attention_heads}; change one of them or set --kv-channels.")
        args.kv_channels = args.hidden_size // args.num_attention_heads
    if args.ffn_hidden_size is None:
        # Megatron keeps a gated MLP's parameter count near the 4h one, in multiples of 64.
        args.ffn_hidden_size = int((4 * args.hidden_size * 2 / 3) / 64) * 64 if args.swiglu else 4 * args.hidden_size
        if args.ffn_hidden_size < 1:
            raise ConfigError(f"--swiglu with --hidden-size {args.hidden_size} gives an MLP width of 0; "
                              f"set --ffn-hidden-size.")
    if args.group_query_attention and args.num_attention_heads % args.num_query_groups != 0:
        raise ConfigError(f"--num-query-groups {args.num_query_groups} does not divide --num-attention-heads "
                          f"{args.num_attention_heads}; every key/value group must serve the same number of heads.")
    for name in ("hidden_dropout", "attention_dropout"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}.")
    if args.init_method_std <= 0:
        raise ConfigError(f"--init-method-std must be positive, got {args.init_method_std}.")
    if args.recompute_activations:
        args.recompute_granularity = "selective"
    if args.recompute_granularity == "full":
        if args.recompute_method is None or args.recompute_num_layers is None:
            raise ConfigError("--recompute-granularity full needs --recompute-method (uniform or block) and "
                              "--recompute-num-layers.")
        _positive(args, "recompute_num_layers")
    elif args.recompute_method is not None:
        raise ConfigError(f"--recompute-method {args.recompute_method} only applies to --recompute-granularity "
                          f"full; drop it or use full recomputation.")


def _validate_parallel(args, world_size: int) -> None:
    _positive(args, "tensor_model_parallel_size", "pipeline_model_parallel_size",
              "num_layers_per_virtual_pipeline_stage", "ddp_bucket_size")
    if not args.distributed_timeout_minutes > 0:
        raise ConfigError(f"--distributed-timeout-minutes must be positive, got {args.distributed_timeout_minutes}.")
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if world_size < 1 or world_size % (tp * pp) != 0:
        raise ConfigError(f"the world size {world_size} (WORLD_SIZE, the launched processes) is not divisible "
                          f"by --tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp} = {tp * pp}; "
                          f"launch a multiple of {tp * pp} processes or change the parallel sizes.")
    args.world_size = world_size
    args.data_parallel_size = world_size // (tp * pp)
    if args.num_attention_heads % tp != 0:
        raise ConfigError(f"--num-attention-heads {args.num_attention_heads} is not divisible by "
                          f"--tensor-model-parallel-size {tp}; each tensor-parallel rank must hold whole heads.")
    if args.group_query_attention and args.num_query_groups % tp != 0:
        raise ConfigError(f"--num-query-groups {args.num_query_groups} is not divisible by "
                          f"--tensor-model-parallel-size {tp}; each tensor-parallel rank must hold whole groups.")
    if args.ffn_hidden_size % tp != 0:
        raise ConfigError(f"--ffn-hidden-size {args.ffn_hidden_size} is not divisible by "
                          f"--tensor-model-parallel-size {tp}; the MLP is split by columns across ranks.")
    if args.sequence_parallel and tp == 1:
        raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size > 1; drop the flag or raise "
                          "the tensor-parallel size.")
    if getattr(args, "encoder_decoder", False):
        _validate_split_rank(args, pp)
    elif args.num_layers % pp != 0:
        raise ConfigError(f"--num-layers {args.num_layers} is not divisible by --pipeline-model-parallel-size "
                          f"{pp}; every pipeline stage needs the same number of layers.")
    args.virtual_pipeline_model_parallel_size = None
    per_virtual = args.num_layers_per_virtual_pipeline_stage
    if per_virtual is not None:
        if pp == 1:
            raise ConfigError("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1.")
        per_stage = args.num_layers // pp
        if per_stage % per_virtual != 0:
            raise ConfigError(f"the {per_stage} layers of each pipeline stage (--num-layers {args.num_layers} / "
                              f"--pipeline-model-parallel-size {pp}) are not divisible by "
                              f"--num-layers-per-virtual-pipeline-stage {per_virtual}.")
        # One chunk per stage is plain 1F1B.
        args.virtual_pipeline_model_parallel_size = per_stage // per_virtual if per_stage > per_virtual else None


def _validate_split_rank(args, pp: int) -> None:
    """An encoder-decoder pipeline: encoder on stages [0, split), decoder on [split, pp), each stack
    split evenly over its stages; none for a run that saves Megatron-LM's torch_dist."""
    split = args.pipeline_model_parallel_split_rank
    if pp > 1 and args.save and args.ckpt_format == "torch_dist":
        raise ConfigError(f"--ckpt-format torch_dist writes a T5 as one pipeline stage (Megatron-LM's T5 split over "
                          f"stages is neither read nor written here), not --pipeline-model-parallel-size {pp}; drop "
                          f"--pipeline-model-parallel-size, or save with --ckpt-format megatron and convert the "
                          f"checkpoint with tools/convert_checkpoint.py --to-megatron-lm.")
    if pp == 1:
        if split is not None:
            raise ConfigError(f"--pipeline-model-parallel-split-rank {split} needs --pipeline-model-parallel-size "
                              f"> 1; drop it for a single-stage run.")
        return
    if split is None:
        raise ConfigError(f"--pipeline-model-parallel-size {pp} puts the encoder and the decoder on different "
                          f"stages; give --pipeline-model-parallel-split-rank (the first decoder stage, e.g. "
                          f"{pp // 2}).")
    if not 0 < split < pp:
        raise ConfigError(f"--pipeline-model-parallel-split-rank {split} must be between 1 and {pp - 1} "
                          f"(--pipeline-model-parallel-size {pp}) so that encoder and decoder get a stage each.")
    if args.num_layers_per_virtual_pipeline_stage is not None:
        raise ConfigError("--num-layers-per-virtual-pipeline-stage cannot be combined with "
                          "--pipeline-model-parallel-split-rank; an encoder-decoder pipeline has no virtual stages.")
    for flag, layers, stages in (("--encoder-num-layers", args.num_layers, split),
                                 ("--decoder-num-layers", args.decoder_num_layers, pp - split)):
        if layers % stages != 0:
            raise ConfigError(f"{flag} {layers} is not divisible by its {stages} pipeline stages "
                              f"(--pipeline-model-parallel-split-rank {split} of --pipeline-model-parallel-size "
                              f"{pp}); change the layers or the split.")


def _validate_batch_and_length(args) -> None:
    _require(args, "micro_batch_size")
    _positive(args, "micro_batch_size", "global_batch_size", "train_iters", "train_samples")
    dp = args.data_parallel_size
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    if args.train_iters is None and args.train_samples is None:
        raise ConfigError("give the run a length: --train-iters N or --train-samples N.")
    if args.train_iters is not None and args.train_samples is not None:
        raise ConfigError("--train-iters and --train-samples were both given; choose one.")
    by_iters = args.train_iters is not None
    mixed = [flag for flag, value in (
        ("--lr-decay-samples", args.lr_decay_samples), ("--lr-warmup-samples", args.lr_warmup_samples or None),
        ("--lr-wsd-decay-samples", args.lr_wsd_decay_samples), ("--rampup-batch-size", args.rampup_batch_size))
        if value is not None] if by_iters else [flag for flag, value in (
        ("--lr-decay-iters", args.lr_decay_iters), ("--lr-warmup-iters", args.lr_warmup_iters or None),
        ("--lr-wsd-decay-iters", args.lr_wsd_decay_iters)) if value is not None]
    if mixed:
        unit, other = ("--train-iters", "iterations") if by_iters else ("--train-samples", "samples")
        raise ConfigError(f"{', '.join(mixed)} cannot be combined with {unit}; count everything in {other}.")
    if args.lr_warmup_fraction is not None and (args.lr_warmup_iters or args.lr_warmup_samples):
        raise ConfigError("--lr-warmup-fraction and --lr-warmup-iters/--lr-warmup-samples were both given; "
                          "choose one.")
    schedule = BatchSchedule.from_config(_training_config(args), dp)
    if args.virtual_pipeline_model_parallel_size is not None:
        pp = args.pipeline_model_parallel_size
        sizes = {schedule.global_batch_size, schedule.global_batch_size_at(0)}
        for size in sorted(sizes):
            micro = size // (args.micro_batch_size * dp)
            if micro % pp != 0:
                raise ConfigError(f"the interleaved pipeline needs the micro-batches per step ({micro} for a global "
                                  f"batch of {size}) to be a multiple of --pipeline-model-parallel-size {pp}; change "
                                  f"--global-batch-size or --micro-batch-size.")
    if not by_iters:
        args.train_iters = schedule.train_iters_for_samples(args.train_samples)
        if args.train_iters < 1:
            raise ConfigError(f"--train-samples {args.train_samples} is less than one global batch "
                              f"({args.global_batch_size}); raise it.")


def _validate_optimizer(args) -> None:
    _require(args, "lr")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}.")
    if not 0.0 <= args.adam_beta1 < 1.0 or not 0.0 <= args.adam_beta2 < 1.0:
        raise ConfigError(f"--adam-beta1 and --adam-beta2 must be in [0, 1), got {args.adam_beta1} and "
                          f"{args.adam_beta2}.")
    if args.adam_eps <= 0 or args.clip_grad < 0 or args.weight_decay < 0 or args.sgd_momentum < 0:
        raise ConfigError("--adam-eps must be positive and --clip-grad, --weight-decay and --sgd-momentum "
                          "non-negative.")
    if args.weight_decay_incr_style == "constant":
        if args.start_weight_decay is not None or args.end_weight_decay is not None:
            raise ConfigError("--start-weight-decay/--end-weight-decay need --weight-decay-incr-style linear or "
                              "cosine; with a constant weight decay use --weight-decay.")
        args.start_weight_decay = args.end_weight_decay = args.weight_decay
    elif args.start_weight_decay is None or args.end_weight_decay is None:
        raise ConfigError(f"--weight-decay-incr-style {args.weight_decay_incr_style} needs both "
                          f"--start-weight-decay and --end-weight-decay.")
    if args.lr_decay_style == "WSD" and args.lr_wsd_decay_iters is None and args.lr_wsd_decay_samples is None:
        raise ConfigError("--lr-decay-style WSD needs the length of its decay phase: --lr-wsd-decay-iters "
                          "(or --lr-wsd-decay-samples).")
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        raise ConfigError("--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler were both "
                          "given; choose one: the flags' learning-rate schedule or the checkpoint's.")
    # The schedule's own checks (min <= max, warmup shorter than decay, WSD length) name the flags.
    schedule_from_config(build(OptimizerConfig, args), build(SchedulerConfig, args), _training_config(args))
    if args.loss_scale is not None and args.loss_scale <= 0:
        raise ConfigError(f"--loss-scale must be positive, got {args.loss_scale}.")
    precision = _precision_config(args)
    if args.fp16 and args.loss_scale is None:
        build_loss_scaler(precision)   # checks window, hysteresis and the scale range


def _validate_logging_and_data(args) -> None:
    _positive(args, "log_interval", "eval_interval", "save_interval", "max_skipped_iterations", "exit_interval",
              "keep_last")
    if args.eval_iters < 0:
        raise ConfigError(f"--eval-iters must be 0 or more, got {args.eval_iters}.")
    if args.save is not None and args.save_interval is None:
        raise ConfigError(f"--save {args.save} needs --save-interval (iterations between checkpoints).")
    if args.exit_duration_in_mins is not None and args.exit_duration_in_mins <= 0:
        raise ConfigError(f"--exit-duration-in-mins must be positive, got {args.exit_duration_in_mins}.")
    if getattr(args, "vocab_size", None) is not None and args.vocab_size < 1:
        raise ConfigError(f"--vocab-size must be a positive integer, got {args.vocab_size}.")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise ConfigError(f"--peak-tflops must be positive, got {args.peak_tflops}.")
    if args.data_path:
        parse_data_path(args.data_path)
        train_share = parse_split(args.split)[0]
        # A zero share is Megatron's "no such split": a run with iterations to train would
        # get no batches at all.
        if train_share == 0:
            raise ConfigError(f'--split "{args.split}" gives the train split no documents, but the run '
                              f"trains for {args.train_iters} iterations; give train a share, e.g. "
                              f'--split "949,50,1".')


def _validate_deepspeed(args) -> None:
    """--deepspeed: ds.json read, checked against the flags and completed (deepspeed_config.py)."""
    args.deepspeed_resolved = None
    if not getattr(args, "deepspeed", False):
        if getattr(args, "deepspeed_config", None):
            raise ConfigError(f"--deepspeed_config {args.deepspeed_config} is given without --deepspeed; add "
                              f"--deepspeed to train through DeepSpeed, or drop the config.")
        return
    # A dry run checks ds.json against the flags on a machine that need not have DeepSpeed.
    if importlib.util.find_spec("deepspeed") is None and not getattr(args, "dry_run", False):
        raise ConfigError("--deepspeed needs the deepspeed package; install it with "
                          "pip install 'mcore-pretrain[deepspeed]'.")
    flags = FlagSettings(
        global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size,
        data_parallel_size=args.data_parallel_size, tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size, sequence_parallel=args.sequence_parallel,
        rampup=args.rampup_batch_size is not None, fp16=args.fp16, bf16=args.bf16, clip_grad=args.clip_grad,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        adam_betas=(args.adam_beta1, args.adam_beta2), adam_eps=args.adam_eps, loss_scale=args.loss_scale,
        initial_loss_scale=args.initial_loss_scale, min_loss_scale=args.min_loss_scale,
        loss_scale_window=int(args.loss_scale_window), hysteresis=args.hysteresis, train_iters=args.train_iters,
        lr_schedule_flags=_lr_schedule_flags_given(args))
    args.deepspeed_resolved = resolve_deepspeed_config(read_deepspeed_config(args.deepspeed_config), flags)
    if args.fp16 and not getattr(args, "dry_run", False):   # a dry run plans for the cluster's devices
        # DeepSpeed 0.19.8 raises this inside deepspeed.initialize, after the process groups start.
        from deepspeed.accelerator import get_accelerator
        accelerator = get_accelerator()
        if not accelerator.is_fp16_supported():
            raise ConfigError(f"--fp16 with --deepspeed: DeepSpeed does not train fp16 on this "
                              f"{accelerator.device_name()} device; use --bf16, or --fp16 with the native backend "
                              f"(drop --deepspeed).")
    _validate_deepspeed_checkpoints(args)


def _lr_schedule_flags_given(args) -> tuple:
    """Megatron's schedule flags away from their defaults, as "--flag value"."""
    defaults = {"lr_decay_style": "linear", "lr_decay_iters": None, "lr_decay_samples": None,
                "lr_wsd_decay_iters": None, "lr_wsd_decay_samples": None, "lr_warmup_fraction": None,
                "lr_warmup_iters": 0, "lr_warmup_samples": 0, "lr_warmup_init": 0.0, "min_lr": 0.0}
    return tuple(f"--{name.replace('_', '-')} {getattr(args, name)}" for name, default in defaults.items()
                 if getattr(args, name, default) != default)


def _validate_deepspeed_checkpoints(args) -> None:
    """--save/--load with --deepspeed go through the engine (checkpoint/deepspeed_engine.py),
    which writes DeepSpeed's layout."""
    if not (args.save or args.load):
        return
    if args.save and args.ckpt_format == "torch_dist":
        raise ConfigError("--ckpt-format torch_dist is written by the native backend, and DeepSpeed's engine "
                          "saves its own layout; drop --deepspeed, or drop --ckpt-format torch_dist.")
    args.ckpt_format = "deepspeed"
    if args.num_layers_per_virtual_pipeline_stage is not None:
        raise ConfigError("DeepSpeed's engine saves one module per rank, not the model chunks of "
                          "--num-layers-per-virtual-pipeline-stage; drop that flag to save or load with --deepspeed.")
    stage = int(args.deepspeed_resolved.get("zero_optimization", {}).get("stage", 0))
    if args.load and stage == 3 and (args.finetune or args.no_load_optim):
        raise ConfigError(f"--load {args.load} without its optimizer (--finetune or --no-load-optim) at ZeRO stage 3 "
                          f"rebuilds the weights with DeepSpeed's zero_to_fp32, which unpickles the files unsafely; "
                          f"load with the optimizer state, or consolidate the weights first with the checkpoint's "
                          f"zero_to_fp32.py.")


# --- building the dataclasses -------------------------------------------------------------------

def _training_config(args) -> TrainingConfig:
    config = build(TrainingConfig, args)
    config.rampup_batch_size = tuple(args.rampup_batch_size) if args.rampup_batch_size else None
    return config


def _precision_config(args) -> PrecisionConfig:
    config = build(PrecisionConfig, args)
    if int(args.loss_scale_window) != args.loss_scale_window:
        raise ConfigError(f"--loss-scale-window must be a whole number of iterations, got {args.loss_scale_window}.")
    config.loss_scale_window = int(args.loss_scale_window)
    return config


def transformer_config_from_args(args) -> TransformerConfig:
    """The model's TransformerConfig from validated flags (Megatron's core_transformer_config_from_args)."""
    return TransformerConfig.from_megatron_flags(vars(args))


def build_run_config(args) -> RunConfig:
    """Every dataclass of the run from flags that `validate` has passed."""
    return RunConfig(
        model=transformer_config_from_args(args),
        training=_training_config(args),
        optimizer=build(OptimizerConfig, args),
        scheduler=build(SchedulerConfig, args),
        precision=_precision_config(args),
        parallel=build(ParallelConfig, args),
        data=build(DataConfig, args),
        logging=build(LoggingConfig, args),
        checkpoint=build(CheckpointConfig, args),
        deepspeed=build(DeepSpeedConfig, args, {"resolved": "deepspeed_resolved"}),
        max_position_embeddings=args.max_position_embeddings,
    )
