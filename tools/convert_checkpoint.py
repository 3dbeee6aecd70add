#!/usr/bin/env python
"""Convert checkpoints between this package, HuggingFace transformers and Chinese-Transformer-XL.

    # ours (any TP x PP, Megatron or DeepSpeed layout) -> an HF directory
    python tools/convert_checkpoint.py --to-hf --load ckpt/ --output out_hf/
    # an HF directory (save_pretrained) -> ours, split for TP x PP
    python tools/convert_checkpoint.py --from-hf out_hf/ --output ckpt_tp2/ --tensor-model-parallel-size 2 \\
        [--pipeline-model-parallel-size 2] [--ckpt-format deepspeed]
    # ours -> a checkpoint Megatron-LM loads (docs/megatron_lm.md); Megatron-LM's own read anywhere ours do
    python tools/convert_checkpoint.py --to-megatron-lm megatron_ckpt/ --load ckpt/ [--format torch_dist] \\
        [--key-names legacy] [--tensor-model-parallel-size 2]
    # Chinese-Transformer-XL's released checkpoint (<dir>/<iter>/mp_rank_XX_model_states.pt) -> ours
    python tools/convert_checkpoint.py --from-ctxl ctxl_ckpt/ --output ckpt_txl/ [--tensor-model-parallel-size 2]

--to-hf picks the HF class from the model: GPT -> GPT2LMHeadModel (LlamaForCausalLM for an
RMSNorm/SwiGLU/rotary config), BERT -> BertForPreTraining (MegatronBertForPreTraining when
pre-LN), T5 -> T5ForConditionalGeneration, RoFormer -> RoFormerForMaskedLM; --architecture
names another class of the family. It writes config.json, model.safetensors and the tokenizer
the checkpoint's args name (--vocab-file / --merge-file / --tokenizer-model override paths
that moved). Shards are merged one tensor at a time from memory-mapped files.

--from-hf and --from-ctxl write a weights-only checkpoint (Megatron layout: `release`;
DeepSpeed layout: `global_step0`) with args, config and sharding map, which
`pretrain_*.py --load CKPT --finetune --use-checkpoint-args` trains and tools/change_mp.py
reshards.
"""
import argparse
import json

from megatron_core.cli import run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to-hf", action="store_true", help="our checkpoint (--load) -> an HF directory")
    direction.add_argument("--from-hf", metavar="HF_DIR", help="an HF directory -> our checkpoint")
    direction.add_argument("--from-ctxl", metavar="CTXL_DIR",
                           help="a Chinese-Transformer-XL checkpoint directory -> our checkpoint")
    direction.add_argument("--to-megatron-lm", metavar="OUT_DIR",
                           help="our checkpoint (--load) -> a checkpoint Megatron-LM loads, written to OUT_DIR")
    p.add_argument("--load", help="with --to-hf: our checkpoint directory (a --save directory or one iteration's)")
    p.add_argument("--output", help="the directory to write (--to-megatron-lm names its own)")
    p.add_argument("--format", default="torch", choices=["torch", "torch_dist"],
                   help="with --to-megatron-lm: Megatron-LM's --ckpt-format to write")
    p.add_argument("--key-names", default="mcore", choices=["mcore", "legacy"],
                   help="with --to-megatron-lm --format torch: megatron-core's tensor names or the legacy "
                        "language_model.* ones")
    p.add_argument("--architecture", default=None,
                   help="the HF class (e.g. BertModel, MegatronBertForMaskedLM); the family's default if not given")
    p.add_argument("--max-shard-size", default="5GB",
                   help="with --to-hf: the largest safetensors shard (bytes, or e.g. 500MB, 5GB); a bigger model is "
                        "written as model-0000X-of-0000N.safetensors + model.safetensors.index.json")
    p.add_argument("--tensor-model-parallel-size", type=int, default=None,
                   help="the sizes to write (default: 1; with --to-megatron-lm: the checkpoint's own)")
    p.add_argument("--pipeline-model-parallel-size", type=int, default=None)
    p.add_argument("--ckpt-format", default="megatron", choices=["megatron", "deepspeed"])
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    p.add_argument("--no-verify-checkpoint", action="store_true",
                   help="Check the checkpoint's files against its manifest by size only, not by checksum "
                        "(a huge checkpoint on a slow disk)")
    p.add_argument("--vocab-file", default=None, help="with --to-hf/--from-ctxl: the tokenizer's vocabulary file")
    p.add_argument("--merge-file", default=None)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--tokenizer-type", default=None, help="with --from-ctxl: the tokenizer to record in args")
    return p.parse_args(argv)


def _tokenizer_overrides(args) -> dict:
    names = ("tokenizer_type", "vocab_file", "merge_file", "tokenizer_model")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def main(argv=None):
    args = parse_args(argv)
    from megatron_core.errors import ConfigError
    from megatron_core.training.arguments import default_args_record
    if any(size is not None and size < 1 for size in (args.tensor_model_parallel_size,
                                                       args.pipeline_model_parallel_size)):
        raise ConfigError("--tensor-model-parallel-size and --pipeline-model-parallel-size must be 1 or more.")
    if args.to_megatron_lm:
        if not args.load:
            raise ConfigError("--to-megatron-lm converts the checkpoint given by --load; add --load CKPT.")
        from megatron_core.convert.megatron_lm_export import export_megatron_lm
        summary = export_megatron_lm(args.load, args.to_megatron_lm, args.key_names, args.format,
                                     args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                     verify_checksums=not args.no_verify_checkpoint)
        print(f"converted {json.dumps(summary, sort_keys=True)}", flush=True)
        return
    if not args.output:
        raise ConfigError("--output is required: the directory to write.")
    args.tensor_model_parallel_size = args.tensor_model_parallel_size or 1
    args.pipeline_model_parallel_size = args.pipeline_model_parallel_size or 1
    if args.to_hf:
        if not args.load:
            raise ConfigError("--to-hf converts the checkpoint given by --load; add --load CKPT.")
        from megatron_core.convert.hf_export import export_checkpoint
        summary = export_checkpoint(args.load, args.output, args.architecture, _tokenizer_overrides(args),
                                    args.max_shard_size, verify_checksums=not args.no_verify_checkpoint)
    elif args.from_hf:
        from megatron_core.convert.hf_import import import_checkpoint
        summary = import_checkpoint(args.from_hf, args.output, args.tensor_model_parallel_size,
                                    args.pipeline_model_parallel_size, args.ckpt_format,
                                    args.make_vocab_size_divisible_by, args.architecture, default_args_record())
    else:
        from megatron_core.convert.chinese_txl import import_chinese_txl
        summary = import_chinese_txl(args.from_ctxl, args.output, args.tensor_model_parallel_size,
                                     args.pipeline_model_parallel_size, args.ckpt_format,
                                     args.make_vocab_size_divisible_by, _tokenizer_overrides(args),
                                     default_args_record())
    print(f"converted {json.dumps(summary, sort_keys=True)}", flush=True)


if __name__ == "__main__":
    run(main)
