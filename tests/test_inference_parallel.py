"""TP=2 and PP=2 generate the TP=1 tokens, greedy and sampled with a seed (top-k over the
gathered per-rank candidates, top-p over the whole row), in real gloo process groups."""
import pytest
import torch

from megatron_core import mpu
from megatron_core.inference.decoders import CausalLMDecoder
from megatron_core.inference.generation import generate
from megatron_core.inference.sampling import SamplingParams
from tests.harness import run_distributed
from tests.harness.inference_models import VOCAB, random_prompts, tiny_gpt, tiny_llama
from tests.harness.model_checks import single_process_world

pytestmark = pytest.mark.quick

PROMPTS = random_prompts([5, 2, 7], seed=9)
NEW_TOKENS = 6
SETTINGS = {"greedy": SamplingParams(greedy=True),
            "top_k": SamplingParams(temperature=0.8, top_k=5, seed=3),
            "top_p": SamplingParams(temperature=1.2, top_p=0.9, seed=4, repetition_penalty=1.3)}
BUILDERS = {"gpt": tiny_gpt, "llama": tiny_llama}


def _serial_tokens(family):
    with single_process_world():
        model = BUILDERS[family]()
        return {name: generate(CausalLMDecoder(model), PROMPTS, NEW_TOKENS, params, VOCAB).tokens
                for name, params in SETTINGS.items()}


def _generate_in_layout(family, tp, pp, expected):
    mpu.initialize_model_parallel(tp, pp)
    model = BUILDERS[family](tp=tp, stage=mpu.get_pipeline_stage())
    for name, params in SETTINGS.items():
        got = generate(CausalLMDecoder(model), PROMPTS, NEW_TOKENS, params, VOCAB).tokens
        assert got == expected[name], f"{name}: {got} != {expected[name]} (rank {torch.distributed.get_rank()})"


@pytest.mark.parametrize("family", ["gpt", "llama"])
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_parallel_layout_generates_the_serial_tokens(family, tp, pp):
    run_distributed(_generate_in_layout, 2, family, tp, pp, _serial_tokens(family))
