"""The `args` Namespace Megatron-LM (0.16.1, megatron/training/arguments.py) pickles into every
checkpoint file, for the harness's three models.

Not all ~650 names parse_args defines: every name Megatron-LM's load path reads
(check_checkpoint_args, load_args_from_checkpoint, load_checkpoint, the checkpoint converter's
loader_base/saver_base), every name that describes the model, and the training names a resume
compares, with 0.16.1's defaults where the harness has no value of its own. The names set at
run time rather than by parse_args (padded_vocab_size by the tokenizer, iteration,
consumed_*_samples by the training loop) are included too. Values that pickle as classes, the
ones a reader must allowlist: `attention_backend` (megatron.core.transformer.enums.AttnBackend)
and five torch.dtype fields (params_dtype, main_grads_dtype, main_params_dtype, exp_avg_dtype,
exp_avg_sq_dtype).

Vocabulary: NullTokenizer with vocab_size 127 has 128 ids (127 + end-of-document); Megatron-LM
pads to a multiple of make_vocab_size_divisible_by * TP, so that flag is 128 // TP and the
padded vocabulary stays 128 at every TP size.
"""
from __future__ import annotations

import argparse

import torch

from .megatron_lm_models import BATCH, FFN, HEADS, HIDDEN, NUM_LAYERS, SEQ, VOCAB, model_description

LEARNING_RATE = 1e-3


def megatron_lm_args(name: str, *, tp: int, pp: int, rank: int, iteration: int, seed: int, fmt: str,
                     with_optimizer: bool, save_dir: str | None = None, dp: int = 1,
                     distributed_optimizer: bool = False) -> argparse.Namespace:
    from megatron.core.transformer.enums import AttnBackend

    fp32 = torch.float32
    values = dict(
        # model
        num_layers=NUM_LAYERS, encoder_num_layers=NUM_LAYERS, decoder_num_layers=None,
        hidden_size=HIDDEN, ffn_hidden_size=FFN, num_attention_heads=HEADS, kv_channels=HIDDEN // HEADS,
        max_position_embeddings=SEQ, seq_length=SEQ, encoder_seq_length=SEQ, decoder_seq_length=None,
        rotary_base=10000, rotary_percent=1.0, rotary_interleaved=False, use_rope_scaling=False,
        rotary_seq_len_interpolation_factor=None, squared_relu=False, openai_gelu=False,
        apply_query_key_layer_scaling=False, attention_softmax_in_fp32=False,
        apply_residual_connection_post_layernorm=False, layernorm_epsilon=1e-5, qk_layernorm=False,
        init_method_std=0.02, hidden_dropout=0.0, attention_dropout=0.0, num_experts=None,
        moe_ffn_hidden_size=None, moe_layer_freq=1, moe_router_topk=2, mtp_num_layers=None,
        multi_latent_attention=False, is_hybrid_model=False, hybrid_override_pattern=None, spec=None,
        heterogeneous_layers_config_path=None, heterogeneous_layers_config_encoded_json=None,
        transformer_impl="local", use_legacy_models=False, attention_backend=AttnBackend.auto,
        bias_gelu_fusion=False, bias_swiglu_fusion=False, masked_softmax_fusion=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        no_persist_layer_norm=True, use_cpu_initialization=True, perform_initialization=True,
        # vocabulary
        tokenizer_type="NullTokenizer", vocab_size=VOCAB - 1, vocab_file=None, merge_file=None,
        tokenizer_model=None, tiktoken_pattern=None, make_vocab_size_divisible_by=VOCAB // tp,
        padded_vocab_size=VOCAB,
        # parallelism
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=None, num_layers_per_virtual_pipeline_stage=None,
        expert_model_parallel_size=1, context_parallel_size=1, sequence_parallel=False,
        world_size=tp * pp * dp, data_parallel_size=dp, rank=rank, local_rank=rank,
        use_distributed_optimizer=distributed_optimizer, overlap_grad_reduce=False, overlap_param_gather=False,
        recompute_granularity=None, recompute_method=None, recompute_num_layers=None,
        distribute_saved_activations=False, async_tensor_model_parallel_allreduce=True,
        # precision
        fp16=False, bf16=False, fp8=None, params_dtype=fp32, main_grads_dtype=fp32,
        main_params_dtype=fp32, exp_avg_dtype=fp32, exp_avg_sq_dtype=fp32,
        accumulate_allreduce_grads_in_fp32=False, fp16_lm_cross_entropy=False, loss_scale=None,
        initial_loss_scale=4294967296, hysteresis=2,
        # training (grad clipping off: see megatron_cpu.py)
        micro_batch_size=BATCH, global_batch_size=BATCH, train_iters=100, train_samples=None,
        optimizer="adam", lr=LEARNING_RATE, min_lr=0.0, lr_decay_style="linear", lr_decay_iters=None,
        lr_decay_samples=None, lr_warmup_iters=0, lr_warmup_fraction=None, lr_warmup_init=0.0,
        decoupled_lr=None, weight_decay=0.01, start_weight_decay=0.01, end_weight_decay=0.01,
        weight_decay_incr_style="constant", adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
        clip_grad=0.0, seed=seed, data_parallel_random_init=False, phase_transition_iterations=None,
        data_path=None, num_workers=2,
        # checkpointing
        ckpt_format=fmt, use_dist_ckpt=fmt != "torch", auto_detect_ckpt_format=False, save=save_dir,
        load=None, pretrained_checkpoint=None, save_interval=iteration, finetune=False,
        no_save_optim=None if with_optimizer else True, no_save_rng=None, no_load_optim=None,
        no_load_rng=None, use_checkpoint_args=False, use_mp_args_from_checkpoint_args=False,
        use_tokenizer_model_from_checkpoint_args=True, exit_on_missing_checkpoint=False,
        non_persistent_ckpt_type=None, async_save=False, ckpt_step=None,
        dist_ckpt_strictness="assume_ok_unexpected", ckpt_fully_parallel_save=True,
        ckpt_fully_parallel_load=False, ckpt_assume_constant_structure=False,
        # set by the training loop, not parse_args (a fresh run's pretrain() sets iteration 0)
        iteration=0, num_floating_point_operations_so_far=0,
        consumed_train_samples=iteration * BATCH, skipped_train_samples=0, consumed_valid_samples=0,
    )
    values.update(model_description(name))
    return argparse.Namespace(**values)


def check_checkpoint_args(saved: argparse.Namespace, expected: argparse.Namespace, use_dist_ckpt: bool) -> None:
    """Megatron-LM's check_checkpoint_args for a checkpoint of version 3.0 and a run without
    --vocab-file: the same assertion and message. (With --vocab-file it also compares
    max_position_embeddings, make_vocab_size_divisible_by, padded_vocab_size, tokenizer_type.)"""
    compared = ["num_layers", "hidden_size", "num_attention_heads"]
    if not use_dist_ckpt:
        compared += ["tensor_model_parallel_size", "pipeline_model_parallel_size"]
    for arg_name in compared + ["add_position_embedding"]:
        default = True if arg_name == "add_position_embedding" else None
        saved_value = getattr(saved, arg_name, default) if default is not None else getattr(saved, arg_name)
        expected_value = getattr(expected, arg_name)
        assert saved_value == expected_value, (
            f"{arg_name} value from checkpoint ({saved_value}) is not equal to the "
            f"input argument value ({expected_value}).")
