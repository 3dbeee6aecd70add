"""Megatron's flags parse, validate against the world size with no process group, fill the
derived values as Megatron does, and build the config dataclasses; each impossible combination
is one sentence naming the flags."""
import argparse
import json

import pytest
import torch

from megatron_core.errors import ConfigError, UserError
from megatron_core.training.arguments import build_run_config, parse_args, transformer_config_from_args, validate
from megatron_core.training.lr_schedule import schedule_from_config

pytestmark = pytest.mark.quick

BASE = ("--num-layers 8 --hidden-size 64 --num-attention-heads 8 --seq-length 32 --micro-batch-size 2 "
        "--train-iters 100 --lr 3e-4")


def _args(extra="", world=1, base=BASE):
    return validate(parse_args((base + " " + extra).split()), world)


def test_a_megatron_gpt_launch_line_builds_every_config():
    args = _args("--global-batch-size 32 --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 "
                 "--sequence-parallel --bf16 --swiglu --normalization RMSNorm --norm-epsilon 1e-6 "
                 "--position-embedding-type rope --untie-embeddings-and-output-weights --disable-bias-linear "
                 "--group-query-attention --num-query-groups 2 --hidden-dropout 0.0 --attention-dropout 0.0 "
                 "--init-method-std 0.01 --seed 7 --recompute-granularity full --recompute-method uniform "
                 "--recompute-num-layers 2 --min-lr 3e-5 --lr-decay-style cosine --lr-warmup-iters 10 "
                 "--weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0 --use-distributed-optimizer "
                 "--overlap-grad-reduce --ddp-bucket-size 1000 --data-path 0.3 data/a_text_document 0.7 data/b_text_document "
                 "--split 98,2,0 --tokenizer-type GPT2BPETokenizer --vocab-file v.json --merge-file m.txt "
                 "--log-interval 10 --eval-interval 50 --eval-iters 5 --save ckpt --save-interval 20 "
                 "--distributed-backend gloo --peak-tflops 100", world=8)
    assert (args.data_parallel_size, args.kv_channels, args.max_position_embeddings) == (2, 8, 32)
    assert args.ffn_hidden_size == int(4 * 64 * 2 / 3 / 64) * 64 == 128   # Megatron's --swiglu width
    run = build_run_config(args)
    m = run.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size) == (8, 64, 8, 2, 128)
    assert (m.activation, m.normalization, m.layernorm_epsilon, m.position_embedding_type) == ("swiglu", "RMSNorm", 1e-6, "rope")
    assert not m.share_embeddings_and_output_weights and not m.add_bias_linear and not m.add_qkv_bias
    assert (m.params_dtype, m.tensor_model_parallel_size, m.sequence_parallel) == (torch.bfloat16, 2, True)
    assert (m.recompute_granularity, m.recompute_method, m.recompute_num_layers) == ("full", "uniform", 2)
    assert (m.hidden_dropout, m.init_method_std, m.init_seed) == (0.0, 0.01, 7)
    t, o, s, p = run.training, run.optimizer, run.scheduler, run.parallel
    assert (t.micro_batch_size, t.global_batch_size, t.train_iters, t.seq_length, t.seed) == (2, 32, 100, 32, 7)
    assert (o.lr, o.min_lr, o.weight_decay, o.adam_beta2, o.clip_grad) == (3e-4, 3e-5, 0.1, 0.95, 1.0)
    assert (s.lr_decay_style, s.lr_warmup_iters, s.start_weight_decay, s.end_weight_decay) == ("cosine", 10, 0.1, 0.1)
    assert (p.world_size, p.data_parallel_size, p.pipeline_model_parallel_size, p.backend()) == (8, 2, 2, "gloo")
    assert p.use_distributed_optimizer and p.overlap_grad_reduce and p.ddp_bucket_size == 1000
    assert run.precision.bf16 and run.precision.params_dtype == torch.bfloat16
    assert run.data.data_path == ["0.3", "data/a_text_document", "0.7", "data/b_text_document"]
    assert (run.data.split, run.data.tokenizer_type) == ("98,2,0", "GPT2BPETokenizer")
    assert (run.logging.log_interval, run.logging.peak_tflops) == (10, 100.0)
    assert (run.checkpoint.save, run.checkpoint.save_interval, run.checkpoint.load) == ("ckpt", 20, None)
    schedule = schedule_from_config(o, s, t)
    assert (schedule.warmup_steps, schedule.decay_steps) == (10 * 32, 100 * 32)


def test_megatron_defaults_fill_what_was_not_given():
    args = _args(world=4)
    assert args.global_batch_size == 2 * 4            # micro x DP
    assert args.ffn_hidden_size == 4 * 64 and args.kv_channels == 8
    assert (args.lr_decay_style, args.weight_decay, args.clip_grad, args.initial_loss_scale) == ("linear", 0.01, 1.0, 2.0 ** 32)
    assert (args.split, args.eval_iters, args.eval_interval, args.log_interval) == ("969, 30, 1", 100, 1000, 100)
    m = transformer_config_from_args(args)
    assert m.num_query_groups == 8 and m.add_qkv_bias and m.share_embeddings_and_output_weights
    assert m.activation == "gelu" and m.params_dtype == torch.float32
    qkv_only = transformer_config_from_args(_args("--disable-bias-linear --add-qkv-bias"))
    assert not qkv_only.add_bias_linear and qkv_only.add_qkv_bias
    assert transformer_config_from_args(_args("--recompute-activations")).recompute_granularity == "selective"
    assert build_run_config(_args("--fp16")).precision.loss_scale_window == 1000


def test_a_sample_based_run_with_rampup_derives_its_iterations():
    # ramp 4 -> 12 by 4 over 16 samples (an increment every 8): 4, 4, 8, 12, then 12s; 100 samples
    args = _args("--global-batch-size 12 --rampup-batch-size 4 4 16 --lr-decay-samples 80 --lr-warmup-samples 8",
                 world=2, base=BASE.replace("--train-iters 100", "--train-samples 100"))
    assert args.train_iters == 4 + (100 - 28) // 12
    run = build_run_config(args)
    assert run.training.rampup_batch_size == (4, 4, 16) and run.training.train_samples == 100
    schedule = schedule_from_config(run.optimizer, run.scheduler, run.training)
    assert (schedule.warmup_steps, schedule.decay_steps) == (8, 80)


def test_launchers_and_entry_points_can_add_their_flags():
    def extra(parser):
        parser.add_argument("--my-flag", type=int, default=3)
        return parser
    args = parse_args((BASE + " --local_rank=1").split(), extra_args_provider=extra)
    assert args.local_rank == 1 and args.my_flag == 3
    with pytest.raises(SystemExit):
        parse_args((BASE + " --num-layer 2").split())    # no abbreviations, as in Megatron


IMPOSSIBLE = [
    ("--global-batch-size 6", 4, r"--global-batch-size 6 .*--micro-batch-size 2 x data-parallel size 4"),
    ("--pipeline-model-parallel-size 3", 3, r"--num-layers 8 .*--pipeline-model-parallel-size 3"),
    ("--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 3", 2,
     r"--num-layers-per-virtual-pipeline-stage 3"),
    ("--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 2 --global-batch-size 2", 2,
     r"interleaved pipeline .*--pipeline-model-parallel-size 2"),
    ("--tensor-model-parallel-size 3", 3, r"--num-attention-heads 8 .*--tensor-model-parallel-size 3"),
    ("--tensor-model-parallel-size 4 --group-query-attention --num-query-groups 2", 4, r"--num-query-groups 2"),
    ("--tensor-model-parallel-size 4", 6, r"world size 6 .*--tensor-model-parallel-size 4"),
    ("--sequence-parallel", 2, r"--sequence-parallel needs --tensor-model-parallel-size > 1"),
    ("--fp16 --bf16", 1, r"--fp16 and --bf16"),
    ("--train-samples 1000", 1, r"--train-iters and --train-samples"),
    ("--lr-decay-samples 1000", 1, r"--lr-decay-samples cannot be combined with --train-iters"),
    ("--rampup-batch-size 2 2 100 --global-batch-size 8", 1, r"--rampup-batch-size cannot be combined with --train-iters"),
    ("--lr-warmup-fraction 0.1 --lr-warmup-iters 5", 1, r"--lr-warmup-fraction and --lr-warmup-iters"),
    ("--lr-decay-style WSD", 1, r"--lr-wsd-decay-iters"),
    ("--lr-warmup-iters 100", 1, r"warmup .*--lr-warmup-"),
    ("--min-lr 1e-3", 1, r"--min-lr"),
    ("--save ckpt", 1, r"--save ckpt needs --save-interval"),
    ("--max-position-embeddings 16", 1, r"--max-position-embeddings 16 .*--seq-length 32"),
    ("--recompute-granularity full", 1, r"--recompute-method"),
    ("--recompute-method block", 1, r"--recompute-granularity full"),
    ("--start-weight-decay 0.0 --end-weight-decay 0.1", 1, r"--weight-decay-incr-style linear"),
    ("--weight-decay-incr-style cosine --start-weight-decay 0.0", 1, r"--end-weight-decay"),
    ("--kv-channels 0", 1, r"--kv-channels must be a positive integer"),
    ("--ddp-bucket-size 0", 2, r"--ddp-bucket-size must be a positive integer, got 0"),
    ("--loss-scale-window 0 --fp16", 1, r"--loss-scale-window"),
    ("--hysteresis 0 --fp16", 1, r"--hysteresis"),
    ("--override-opt_param-scheduler --use-checkpoint-opt_param-scheduler", 1,
     r"--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler were both given"),
]


@pytest.mark.parametrize("extra,world,match", IMPOSSIBLE, ids=[case[0] for case in IMPOSSIBLE])
def test_an_impossible_combination_is_one_sentence_naming_the_flags(extra, world, match):
    with pytest.raises(ConfigError, match=match) as info:
        _args(extra, world)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("base_change,match", [
    (("--train-iters 100", ""), r"--train-iters N or --train-samples N"),
    (("--lr 3e-4", ""), r"--lr is required"),
    (("--micro-batch-size 2", ""), r"--micro-batch-size is required"),
    (("--hidden-size 64", "--hidden-size 60"), r"--hidden-size 60 .*--num-attention-heads 8"),
])
def test_missing_or_inconsistent_basics_are_one_sentence(base_change, match):
    with pytest.raises(ConfigError, match=match):
        _args(base=BASE.replace(*base_change))


def test_bad_data_flags_are_user_errors_before_any_file_is_opened():
    with pytest.raises(UserError, match="--data-path"):
        _args("--data-path 0.3 a 0.7")
    with pytest.raises(UserError, match="--split"):
        _args("--data-path a --split 1,x")


@pytest.mark.parametrize("split", ["0,100,0", "0/1/0", "0,0,1"])
def test_a_training_run_whose_split_gives_train_no_share_is_one_sentence_naming_split(split):
    # Megatron reads a zero share as "no such split": the run would reach its first step without batches.
    with pytest.raises(ConfigError) as info:
        _args(f"--data-path data/a_text_document --split {split}")
    assert str(info.value) == (f'--split "{split}" gives the train split no documents, but the run trains for 100 '
                               f'iterations; give train a share, e.g. --split "949,50,1".')
    assert _args("--data-path data/a_text_document --split 100,0,0").split == "100,0,0"   # no validation is fine


def test_validation_fills_the_namespace_it_was_given():
    ns = parse_args(BASE.split())
    assert isinstance(ns, argparse.Namespace) and validate(ns, 2) is ns and ns.data_parallel_size == 2


def _encoder_decoder_args(line, world=1):
    from megatron_core.training.arguments import add_encoder_decoder_arguments
    from megatron_core.training.data_options import add_data_options_arguments
    extra = lambda parser: add_data_options_arguments(add_encoder_decoder_arguments(parser))
    return validate(parse_args(line.split(), extra_args_provider=extra), world)


T5_BASE = ("--hidden-size 64 --num-attention-heads 8 --micro-batch-size 2 --train-iters 100 --lr 3e-4 "
           "--encoder-num-layers 4 --encoder-seq-length 64 --decoder-seq-length 96")


def test_t5_flags_fill_megatrons_encoder_decoder_values_and_the_split_reaches_the_parallel_config():
    args = _encoder_decoder_args(T5_BASE + " --decoder-num-layers 2 --pipeline-model-parallel-size 3 "
                                           "--pipeline-model-parallel-split-rank 2", world=3)
    assert (args.num_layers, args.decoder_num_layers, args.seq_length) == (4, 2, 64)
    assert args.max_position_embeddings == 96       # the learned table covers the longer decoder
    run = build_run_config(args)
    assert (run.parallel.pipeline_model_parallel_split_rank, run.model.num_layers) == (2, 4)
    assert _encoder_decoder_args(T5_BASE).decoder_num_layers == 4   # the encoder's depth by default
    with pytest.raises(SystemExit):                  # a decoder-only entry point has no split rank
        parse_args((BASE + " --pipeline-model-parallel-split-rank 1").split())


ENCODER_DECODER_IMPOSSIBLE = [
    ("--pipeline-model-parallel-size 2", 2, r"--pipeline-model-parallel-size 2 .*--pipeline-model-parallel-split-rank"),
    ("--pipeline-model-parallel-size 2 --pipeline-model-parallel-split-rank 2", 2,
     r"--pipeline-model-parallel-split-rank 2 must be between 1 and 1"),
    ("--pipeline-model-parallel-split-rank 1", 1, r"--pipeline-model-parallel-split-rank 1 needs"),
    ("--pipeline-model-parallel-size 3 --pipeline-model-parallel-split-rank 1 --decoder-num-layers 3", 3,
     r"--decoder-num-layers 3 is not divisible by its 2 pipeline stages"),
    ("--pipeline-model-parallel-size 4 --pipeline-model-parallel-split-rank 3", 4,
     r"--encoder-num-layers 4 is not divisible by its 3 pipeline stages"),
    ("--num-layers 6", 1, r"--encoder-num-layers 4 and --num-layers 6 disagree"),
    ("--seq-length 32", 1, r"--encoder-seq-length 64 and --seq-length 32 disagree"),
    ("--max-position-embeddings 64", 1, r"--max-position-embeddings 64 .*--decoder-seq-length 96"),
    ("--pipeline-model-parallel-size 2 --pipeline-model-parallel-split-rank 1 --save ckpt --save-interval 5 "
     "--ckpt-format torch_dist", 2, r"--ckpt-format torch_dist writes a T5 as one pipeline stage .*not "
     r"--pipeline-model-parallel-size 2; drop --pipeline-model-parallel-size, or save with --ckpt-format megatron"),
]


@pytest.mark.parametrize("extra,world,match", ENCODER_DECODER_IMPOSSIBLE, ids=[c[0] for c in ENCODER_DECODER_IMPOSSIBLE])
def test_an_impossible_encoder_decoder_layout_is_one_sentence_naming_the_flags(extra, world, match):
    with pytest.raises(ConfigError, match=match) as info:
        _encoder_decoder_args(T5_BASE + " " + extra, world)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


@pytest.mark.parametrize("config,extra,world,match", [
    ({"zero_optimization": {"stage": 1}}, "--save ckpt --save-interval 5 --pipeline-model-parallel-size 2 "
     "--num-layers-per-virtual-pipeline-stage 2 --global-batch-size 4", 2,
     r"--num-layers-per-virtual-pipeline-stage; drop"),
    ({"zero_optimization": {"stage": 3}}, "--load ckpt --finetune", 1, r"ZeRO stage 3 .*zero_to_fp32"),
    ({"zero_optimization": {"stage": 3}}, "--load ckpt --no-load-optim", 1, r"--no-load-optim\) at ZeRO stage 3"),
], ids=["virtual-stages", "zero3-finetune", "zero3-no-load-optim"])
def test_a_deepspeed_checkpoint_the_engine_cannot_save_or_load_safely_is_one_sentence(tmp_path, config, extra, world,
                                                                                        match):
    pytest.importorskip("deepspeed")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=match) as info:
        _args(f"--deepspeed --deepspeed_config {path} {extra}", world)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_deepspeed_with_save_writes_deepspeed_layout(tmp_path):
    pytest.importorskip("deepspeed")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    args = _args(f"--deepspeed --deepspeed_config {path} --save ckpt --save-interval 5")
    assert args.ckpt_format == "deepspeed"


def test_torch_dist_is_a_format_the_native_backend_saves_and_the_engine_refuses(tmp_path):
    args = _args("--save ckpt --save-interval 5 --ckpt-format torch_dist")
    assert args.ckpt_format == "torch_dist" and build_run_config(args).checkpoint.ckpt_format == "torch_dist"
    pytest.importorskip("deepspeed")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    with pytest.raises(ConfigError, match=r"--ckpt-format torch_dist is written by the native backend"):
        _args(f"--deepspeed --deepspeed_config {path} --save ckpt --save-interval 5 --ckpt-format torch_dist")


def test_deepspeed_fp16_on_a_device_without_it_is_one_sentence_before_any_process_group(tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.accelerator import get_accelerator
    if get_accelerator().is_fp16_supported():
        pytest.skip("this device trains fp16 under DeepSpeed")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    with pytest.raises(ConfigError, match=r"--fp16 with --deepspeed: DeepSpeed does not train fp16 .*--bf16") as info:
        _args(f"--deepspeed --deepspeed_config {path} --fp16")
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_a_run_without_tokenizer_type_is_one_sentence_before_any_process_group():
    import torch.distributed as dist
    from megatron_core.training.loop import pretrain
    from megatron_core.training.train_spec import TrainSpec

    def never(*_):
        raise AssertionError("nothing is built before the flags are checked")
    with pytest.raises(ConfigError, match=r"^--tokenizer-type is required: it sets the vocabulary size"):
        pretrain(TrainSpec("gpt", never, never), argv=BASE.split())
    assert not dist.is_initialized()
