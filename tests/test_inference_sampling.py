"""One sampling step draws from the distribution the plain formula gives (softmax of l / T,
the k largest, the top-p nucleus), repetition penalty and top-k/top-p agree with HF's
logits processors, and a seed makes draws reproducible. No processes: pure tensor code
(the TP group is a world of one here; tests/test_inference_parallel.py runs TP=2)."""
import pytest
import torch

from megatron_core.errors import ConfigError
from megatron_core.inference.sampling import SamplingParams, candidate_probabilities, draw, penalize_repeats
from megatron_core.inference.vocab_parallel_sampling import sample_next_tokens

pytestmark = pytest.mark.quick

V = 12


def _logits(seed=0, batch=3):
    return torch.randn(batch, V, generator=torch.Generator().manual_seed(seed)) * 2


def _plain_distribution(logits, temperature, top_k, top_p):
    """Independent formula: sort, keep the k largest, softmax, keep the nucleus, renormalise."""
    out = torch.zeros_like(logits)
    for row in range(logits.shape[0]):
        values, ids = torch.sort(logits[row] / temperature, descending=True)
        if top_k:
            values, ids = values[:top_k], ids[:top_k]
        probs = torch.softmax(values, dim=0)
        if 0 < top_p < 1:
            kept, mass = 0, 0.0
            while mass < top_p:
                mass += float(probs[kept])
                kept += 1
            probs, ids = probs[:kept] / probs[:kept].sum(), ids[:kept]
        out[row, ids] = probs
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 0.0), (0.7, 4, 0.0), (1.3, 0, 0.8), (0.9, 5, 0.6)])
def test_step_distribution_equals_the_plain_formula(temperature, top_k, top_p):
    logits = _logits()
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    expected = _plain_distribution(logits, temperature, top_k, top_p)
    torch.testing.assert_close(candidate_probabilities(logits, params), expected, rtol=1e-5, atol=1e-6)
    # The draws realise it: evenly spaced uniforms land on each token in proportion to its probability.
    n = 20000
    uniforms = (torch.arange(n) + 0.5) / n
    for row in range(logits.shape[0]):
        picks = draw(expected[row].expand(n, V), uniforms)
        frequencies = torch.bincount(picks, minlength=V).float() / n
        torch.testing.assert_close(frequencies, expected[row], rtol=0, atol=2.0 / n)


def test_sampled_tokens_lie_in_the_allowed_set_and_a_seed_repeats_them():
    logits = _logits(1, batch=4)
    params = SamplingParams(temperature=0.8, top_k=3, seed=11)
    allowed = _plain_distribution(logits, 0.8, 3, 0.0) > 0
    previous = torch.full((4, 1), -1)
    draws = [sample_next_tokens(logits, params, torch.Generator().manual_seed(11), previous, V) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    many = [sample_next_tokens(logits, params, torch.Generator().manual_seed(s), previous, V) for s in range(40)]
    for tokens in many:
        assert allowed[torch.arange(4), tokens].all()
    assert len({tuple(t.tolist()) for t in many}) > 1


def test_vocabulary_padding_is_never_chosen():
    logits = torch.full((2, V), -5.0)
    logits[:, -2:] = 50.0          # the two padding rows would win
    params = SamplingParams(greedy=True)
    tokens = sample_next_tokens(logits, params, torch.Generator(), torch.full((2, 1), -1), vocab_size=V - 2)
    assert (tokens < V - 2).all()


def test_greedy_takes_the_lowest_id_on_a_tie():
    logits = torch.zeros(1, V)
    logits[0, [3, 7]] = 4.0
    assert sample_next_tokens(logits, SamplingParams(greedy=True), torch.Generator(), torch.full((1, 1), -1),
                              V).item() == 3


def test_penalty_and_filters_agree_with_hf_logits_processors():
    transformers = pytest.importorskip("transformers")
    logits = _logits(2)
    previous = torch.tensor([[1, 5, 5], [0, 2, 11], [4, 4, 4]])
    hf = transformers.RepetitionPenaltyLogitsProcessor(1.7)(previous, logits.clone())
    torch.testing.assert_close(penalize_repeats(logits, previous, 1.7), hf)
    for top_k, top_p in ((4, 0.0), (0, 0.75)):
        params = SamplingParams(top_k=top_k, top_p=top_p)
        warper = transformers.TopKLogitsWarper(top_k) if top_k else transformers.TopPLogitsWarper(top_p)
        expected = torch.softmax(warper(previous, logits.clone()), dim=-1)
        torch.testing.assert_close(candidate_probabilities(logits, params), expected, rtol=1e-5, atol=1e-6)


def test_bad_sampling_values_are_one_sentence():
    for bad in (dict(temperature=0.0), dict(top_k=-1), dict(top_p=1.5), dict(repetition_penalty=0.0)):
        with pytest.raises(ConfigError):
            SamplingParams(**bad)
