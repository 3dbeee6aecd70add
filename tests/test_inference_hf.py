"""Greedy generation equals transformers' generate(do_sample=False) on our model exported to
HF through the registry: GPT-2 and Llama (grouped-query attention) shapes, a batch of
prompts of different lengths (ours left padded, HF's one prompt at a time)."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from megatron_core.inference.decoders import CausalLMDecoder  # noqa: E402
from megatron_core.inference.generation import generate  # noqa: E402
from megatron_core.inference.sampling import SamplingParams  # noqa: E402
from megatron_core.models.hf.registry import get_mapping  # noqa: E402
from tests.harness.inference_models import PADDED, VOCAB, random_prompts, tiny_gpt, tiny_llama  # noqa: E402
from tests.harness.model_checks import single_process_world  # noqa: E402

pytestmark = pytest.mark.quick

NEW_TOKENS = 10


@pytest.fixture(scope="module", autouse=True)
def world():
    with single_process_world():
        yield


def _exported(model, family, directory):
    mapping = get_mapping(family)
    spec = mapping.spec(model.config, vocab_size=VOCAB, padded_vocab_size=PADDED,
                        max_sequence_length=model.max_sequence_length)
    with open(directory / "config.json", "w") as f:
        json.dump(mapping.config_to_hf(spec), f)
    save_file(mapping.state_dict_to_hf(model.state_dict(), spec), str(directory / "model.safetensors"))
    return transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval()


@pytest.mark.parametrize("family,build", [("gpt", tiny_gpt), ("llama", tiny_llama)], ids=["gpt2", "llama_gqa"])
def test_greedy_equals_transformers_generate(family, build, tmp_path):
    model = build()
    hf = _exported(model, family, tmp_path)
    prompts = random_prompts([6, 2, 9], seed=7)
    ours = generate(CausalLMDecoder(model), prompts, NEW_TOKENS, SamplingParams(greedy=True), VOCAB).tokens
    for prompt, tokens in zip(prompts, ours):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert tokens == out[0, len(prompt):].tolist()
