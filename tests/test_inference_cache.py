"""Cached incremental decoding gives, token for token, what recomputing the whole sequence
with the model's ordinary forward gives: GPT, Llama (GQA), RoFormer in LM mode, T5, and
Transformer-XL over three turns against the serial model with memory."""
import pytest
import torch

from megatron_core.inference.decoders import CausalLMDecoder, RoFormerLMDecoder, T5Decoder
from megatron_core.inference.generation import generate
from megatron_core.inference.kv_cache import InferenceContext
from megatron_core.inference.sampling import SamplingParams
from megatron_core.inference.transformer_xl import TransformerXLSession
from tests.harness.inference_models import (VOCAB, full_logits, greedy_by_recomputation, random_prompts,
                                                    tiny_gpt, tiny_llama, tiny_roformer, tiny_t5,
                                                    tiny_transformer_xl)
from tests.harness.model_checks import single_process_world

pytestmark = pytest.mark.quick

GREEDY = SamplingParams(greedy=True)
STEPS = 8


@pytest.fixture(scope="module", autouse=True)
def world():
    with single_process_world():
        yield


@pytest.mark.parametrize("build", [tiny_gpt, tiny_llama], ids=["gpt", "llama_gqa"])
def test_cached_batch_of_unequal_prompts_equals_full_recomputation(build):
    model = build()
    prompts = random_prompts([7, 3, 5], seed=1)
    got = generate(CausalLMDecoder(model), prompts, STEPS, GREEDY, VOCAB)
    for prompt, tokens in zip(prompts, got.tokens):
        expected = greedy_by_recomputation(lambda ids: full_logits(model, ids)[0, -1], prompt, STEPS)
        assert tokens == expected


def test_cached_log_probs_equal_the_full_forward_log_softmax():
    model = tiny_llama()
    prompt = random_prompts([5], seed=2)[0]
    got = generate(CausalLMDecoder(model), [prompt], 4, GREEDY, VOCAB, return_log_probs=True,
                   return_prompt_log_probs=True)
    ids = torch.tensor([prompt + got.tokens[0]])
    log_probs = torch.log_softmax(full_logits(model, ids)[0, :, :VOCAB].float(), dim=-1)
    expected = log_probs[:-1].gather(1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(got.prompt_log_probs[0] + got.log_probs[0]), expected[:len(prompt) + 3],
                               rtol=1e-4, atol=1e-4)


def test_llama_cache_holds_the_key_value_heads_not_the_repeated_query_heads():
    model = tiny_llama()
    context = InferenceContext(1, 8)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), torch.arange(3)[None], inference_context=context)
    assert context.cached_kv_heads(1) == 2 and model.config.num_attention_heads == 4


def test_roformer_lm_mode_cached_equals_full_recomputation():
    model = tiny_roformer()
    prompts = random_prompts([6, 4], seed=3)
    got = generate(RoFormerLMDecoder(model), prompts, STEPS, GREEDY, VOCAB)
    for prompt, tokens in zip(prompts, got.tokens):
        expected = greedy_by_recomputation(lambda ids: full_logits(model, ids, "roformer")[0, -1], prompt, STEPS)
        assert tokens == expected


def test_t5_encoder_once_and_cached_decoder_equal_full_recomputation():
    model = tiny_t5()
    start = 1
    prompt = random_prompts([9], seed=4)[0]
    got = generate(T5Decoder(model, start), [prompt], STEPS, GREEDY, VOCAB)
    encoder_ids = torch.tensor([prompt])
    expected = greedy_by_recomputation(
        lambda ids: full_logits(model, ids, "t5", encoder_ids)[0, -1], [start], STEPS)
    assert got.tokens[0] == expected


def test_transformer_xl_three_turns_equal_the_serial_model_with_memory():
    model = tiny_transformer_xl(mem_length=6)
    session = TransformerXLSession(model, VOCAB)
    mems = None
    for turn, prompt in enumerate(random_prompts([4, 3, 5], seed=5)):
        got = session.generate([prompt], 5, GREEDY)
        # The serial model: the whole turn as one segment after the memory of the earlier turns.
        expected = greedy_by_recomputation(lambda ids: model(ids, mems)[0][0, -1], prompt, 5)
        assert got.tokens[0] == expected, f"turn {turn}"
        with torch.no_grad():
            _, mems = model(torch.tensor([prompt + expected]), mems)
        for ours, serial in zip(session.mems, mems):
            torch.testing.assert_close(ours, serial, rtol=1e-5, atol=1e-5)


def test_generation_stops_at_eos_and_at_the_length():
    model = tiny_gpt()
    prompt = random_prompts([4], seed=6)[0]
    free = generate(CausalLMDecoder(model), [prompt], STEPS, GREEDY, VOCAB).tokens[0]
    assert len(free) == STEPS
    eos = free[2]
    stopped = generate(CausalLMDecoder(model), [prompt], STEPS, GREEDY, VOCAB, eos_id=eos).tokens[0]
    assert stopped == free[:free.index(eos) + 1]
