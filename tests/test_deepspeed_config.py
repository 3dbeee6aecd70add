"""ds.json against Megatron's flags: filled where silent, one sentence where they disagree. No processes,
no deepspeed import."""
import json

import pytest

from megatron_core.errors import ConfigError
from tests.harness.deepspeed_op_cache import remove_stale_locks
from megatron_core.training.deepspeed_config import FlagSettings, read_deepspeed_config, resolve_deepspeed_config

pytestmark = pytest.mark.quick

FLAGS = FlagSettings(global_batch_size=32, micro_batch_size=2, data_parallel_size=4, lr=3e-3, weight_decay=0.1,
                     clip_grad=1.0)


def test_silent_config_is_filled_from_the_flags():
    resolved = resolve_deepspeed_config({"zero_optimization": {"stage": 1}}, FLAGS)
    assert resolved["train_batch_size"] == 32
    assert resolved["train_micro_batch_size_per_gpu"] == 2
    assert resolved["gradient_accumulation_steps"] == 4          # 32 / (2 x 4)
    assert resolved["gradient_clipping"] == 1.0
    assert resolved["fp16"]["enabled"] is False and resolved["bf16"]["enabled"] is False
    assert resolved["managed_gradient_accumulation"] is False    # our schedules own the micro-batches


def test_auto_values_are_filled_and_agreeing_values_kept():
    config = {"train_batch_size": "auto", "gradient_accumulation_steps": 4, "bf16": {"enabled": "auto"}}
    resolved = resolve_deepspeed_config(config, FlagSettings(**{**FLAGS.__dict__, "bf16": True}))
    assert resolved["train_batch_size"] == 32 and resolved["bf16"]["enabled"] is True
    assert config["train_batch_size"] == "auto"                  # the caller's dict is not changed


@pytest.mark.parametrize("config,words", [
    ({"train_batch_size": 64}, ["train_batch_size 64", "--global-batch-size gives 32"]),
    ({"train_micro_batch_size_per_gpu": 4}, ["train_micro_batch_size_per_gpu 4", "--micro-batch-size gives 2"]),
    ({"gradient_accumulation_steps": 2}, ["gradient_accumulation_steps 2", "gives 4"]),
    ({"gradient_clipping": 0.5}, ["gradient_clipping 0.5", "--clip-grad gives 1.0"]),
    ({"fp16": {"enabled": True}}, ["fp16.enabled true", "--fp16 is not given"]),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}, ["optimizer.params.lr 0.0001", "--lr gives 0.003"]),
    ({"optimizer": {"type": "Lamb"}}, ["optimizer.type Lamb", "--optimizer gives adam"]),
    ({"scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 1e-3}}},
     ["scheduler.params.warmup_max_lr 0.001", "--lr gives 0.003"]),
    ({"scheduler": {"type": "StepLR"}}, ["scheduler.type 'StepLR'", "WarmupDecayLR"]),
])
def test_contradiction_is_one_sentence_naming_the_key_and_the_flag(config, words):
    with pytest.raises(ConfigError) as raised:
        resolve_deepspeed_config(config, FLAGS)
    message = str(raised.value)
    assert message.count(". ") == 0 and message.endswith(".")
    for word in words:
        assert word in message, message


def test_a_deepspeed_scheduler_is_filled_from_lr_and_train_iters():
    flags = FlagSettings(**{**FLAGS.__dict__, "train_iters": 50})
    resolved = resolve_deepspeed_config({"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 5}}},
                                        flags)
    assert resolved["scheduler"] == {"type": "WarmupDecayLR", "params": {
        "warmup_num_steps": 5, "warmup_max_lr": 3e-3, "total_num_steps": 50}}


def test_a_deepspeed_scheduler_with_megatron_schedule_flags_is_one_sentence_naming_both():
    flags = FlagSettings(**{**FLAGS.__dict__, "lr_schedule_flags": ("--lr-decay-style cosine",)})
    with pytest.raises(ConfigError) as raised:
        resolve_deepspeed_config({"scheduler": {"type": "WarmupCosineLR"}}, flags)
    message = str(raised.value)
    assert "scheduler WarmupCosineLR" in message and "--lr-decay-style cosine" in message
    assert message.count(". ") == 0 and message.endswith(".")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero2_and_zero3_with_pipeline_parallelism_are_refused(stage):
    with pytest.raises(ConfigError, match=f"ZeRO stage {stage} .* --pipeline-model-parallel-size 2 use "
                                          "zero_optimization.stage 0 or 1"):
        resolve_deepspeed_config({"zero_optimization": {"stage": stage}},
                                 FlagSettings(**{**FLAGS.__dict__, "pipeline_model_parallel_size": 2}))


def test_zero1_with_pipeline_parallelism_is_accepted():
    resolved = resolve_deepspeed_config({"zero_optimization": {"stage": 1}},
                                        FlagSettings(**{**FLAGS.__dict__, "pipeline_model_parallel_size": 2}))
    assert resolved["zero_optimization"]["stage"] == 1


def test_zero3_and_offload_need_tensor_parallel_size_1():
    tp2 = FlagSettings(**{**FLAGS.__dict__, "tensor_model_parallel_size": 2})
    with pytest.raises(ConfigError, match="ZeRO stage 3 runs at --tensor-model-parallel-size 1"):
        resolve_deepspeed_config({"zero_optimization": {"stage": 3}}, tp2)
    with pytest.raises(ConfigError, match="offload_optimizer runs at --tensor-model-parallel-size 1"):
        resolve_deepspeed_config({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, tp2)


def test_offload_gets_deepspeeds_adam_with_the_flags_hyperparameters():
    resolved = resolve_deepspeed_config({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
                                        FLAGS)
    assert resolved["optimizer"] == {"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                                                                 "weight_decay": 0.1}}


def test_missing_or_broken_config_file_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="--deepspeed needs --deepspeed_config"):
        read_deepspeed_config(None)
    with pytest.raises(ConfigError, match="no such file"):
        read_deepspeed_config(str(tmp_path / "absent.json"))
    broken = tmp_path / "ds.json"
    broken.write_text("{\"zero_optimization\": ")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        read_deepspeed_config(str(broken))
    broken.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="holds a list, not a JSON object"):
        read_deepspeed_config(str(broken))


def test_only_stale_op_build_locks_are_removed(tmp_path):
    import os
    stale, live = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "cpu_adam" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir()
        lock.write_text("")
    os.utime(stale, (0, 0))
    assert remove_stale_locks(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists()
