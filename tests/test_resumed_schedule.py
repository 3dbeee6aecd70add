"""The schedule check of a resume without processes: checkpoint entries written out here as
Megatron-LM writes them (its current and older key names), the lengths that change no rate,
and a DeepSpeed-scheduler run, whose flags set only the weight decay. The runs through
pretrain_gpt.py are in tests/test_checkpoint_resume.py."""
import pytest

from megatron_core.errors import ConfigError
from megatron_core.training.arguments import build_run_config, parse_args, validate
from megatron_core.training.checkpointing.resumed_schedule import restore_schedule
from megatron_core.training.deepspeed_lr_schedule import EngineLearningRate
from megatron_core.training.lr_schedule import schedule_from_config

pytestmark = pytest.mark.quick

BASE = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 32 --micro-batch-size 2 "
        "--global-batch-size 2 --lr 1e-3 --lr-decay-style linear --lr-decay-iters 100 --train-iters 9")
# What megatron-core's OptimizerParamScheduler.state_dict() holds for those flags after 7 steps of 2 samples.
MEGATRON_LM = {"max_lr": 0.001, "lr_warmup_steps": 0, "num_steps": 14, "lr_decay_style": "linear",
               "lr_decay_steps": 200, "min_lr": 0.0, "start_wd": 0.01, "end_wd": 0.01, "wd_incr_style": "constant",
               "wd_incr_steps": 200}
# An older Megatron-LM's spellings of the same values.
OLDER = {"start_lr": 0.001, "warmup_steps": 0, "num_iters": 14, "decay_style": "linear", "decay_steps": 200,
         "min_lr": 0.0}


def _run(extra=""):
    run = build_run_config(validate(parse_args(f"{BASE} {extra}".split()), 1))
    return run, schedule_from_config(run.optimizer, run.scheduler, run.training)


@pytest.mark.parametrize("saved", [MEGATRON_LM, OLDER], ids=["megatron-core keys", "older keys"])
def test_a_megatron_lm_entry_that_agrees_loads_its_step_and_one_that_differs_names_the_flag(saved):
    run, schedule = _run()
    assert restore_schedule(schedule, saved, run, "ckpt") is None and schedule.num_steps == 14
    run, schedule = _run("--lr-decay-iters 50")
    with pytest.raises(ConfigError) as caught:
        restore_schedule(schedule, saved, run, "ckpt")
    assert str(caught.value).startswith("--lr-decay-iters 50 sets the learning-rate decay to 50 iterations "
                                        "(100 samples), but the checkpoint in ckpt has 100 iterations (200 samples);")


def test_lengths_that_change_no_rate_are_not_compared_but_a_rising_weight_decays_is():
    constant = dict(MEGATRON_LM, lr_decay_style="constant")
    run, schedule = _run("--lr-decay-style constant --lr-decay-iters 7")     # wd_incr_steps 18, not 200
    assert restore_schedule(schedule, constant, run, "ckpt") is None
    rising = dict(MEGATRON_LM, start_wd=0.0, end_wd=0.1, wd_incr_style="linear")
    run, schedule = _run("--weight-decay-incr-style linear --start-weight-decay 0 --end-weight-decay 0.1")
    with pytest.raises(ConfigError, match=r"^--train-iters 9 sets the weight-decay increase to 9 iterations "
                                          r"\(18 samples\), but the checkpoint in ckpt has 100 iterations"):
        restore_schedule(schedule, rising, run, "ckpt")


class _DeepSpeedScheduler:
    def load_state_dict(self, state):
        self.loaded = state


def test_under_a_deepspeed_scheduler_only_the_weight_decay_is_compared():
    run, schedule = _run("--lr 5e-4 --lr-decay-iters 10")
    engine = EngineLearningRate(schedule, _DeepSpeedScheduler())
    assert restore_schedule(engine, MEGATRON_LM, run, "ckpt") is None and engine.num_steps == 14
    run, schedule = _run("--weight-decay 0.1 --use-checkpoint-opt_param-scheduler")
    engine = EngineLearningRate(schedule, _DeepSpeedScheduler())
    note = restore_schedule(engine, MEGATRON_LM, run, "ckpt")
    assert note == ("--use-checkpoint-opt_param-scheduler: the learning-rate schedule follows the checkpoint in "
                    "ckpt, not the flags: the weight decay 0.01 instead of 0.1.")
    assert (schedule.start_wd, schedule.end_wd, schedule.weight_decay) == (0.01, 0.01, 0.01)
