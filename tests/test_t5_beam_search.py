"""Beam search for T5 (inference/beam_search.py, tools/predict_t5.py --beam-size) against
references written here: at beam size 1 it decodes the greedy tokens; a beam wide enough
to keep every candidate finds the best sequence of an exhaustive search that scores every
sequence of a 5-token vocabulary up to 4 tokens with full forward passes (no KV cache),
for length penalties 0, 1 and 2; a narrow beam scores at least greedy's answer, and its
reported score is the full forward's; TP=2 and PP=2 find the TP=1 beams in real gloo
process groups; predict_t5.py --beam-size writes the same predictions at TP=2 as on one
process; bad --beam-size / --length-penalty values are one sentence."""
import itertools
import json

import pytest
import torch

from megatron_core import mpu
from megatron_core.errors import ConfigError
from megatron_core.inference.beam_search import BeamSettings, beam_search
from megatron_core.inference.decoders import T5Decoder
from megatron_core.inference.generation import generate
from megatron_core.inference.sampling import SamplingParams
from tests.harness import run_distributed
from tests.harness.entry_points import failure_report, run_forked, run_ranks
from tests.harness.inference_checkpoints import write_tiny_checkpoint
from tests.harness.inference_models import full_logits, random_prompts, tiny_t5
from tests.harness.model_checks import single_process_world
from tests.harness.tool_main import run_tool_main

START, EOS = 1, 4
SMALL_VOCAB = 5                 # ids 5.. of the tiny T5's 64 are vocabulary padding here
SOURCES = random_prompts([6, 3, 5, 4], seed=7)


def _search(model, sources, beam_size, steps, length_penalty=1.0, vocab=SMALL_VOCAB):
    return beam_search(T5Decoder(model, START), sources, BeamSettings(beam_size, length_penalty), steps, vocab,
                       eos_id=EOS)


def _greedy(model, sources, steps, vocab=SMALL_VOCAB):
    return generate(T5Decoder(model, START), sources, steps, SamplingParams(greedy=True), vocab, eos_id=EOS).tokens


def _token_log_probs(model, source, sequences):
    """log p of each token of each (equally long) sequence: one full forward pass each, fp64 log softmax
    over the small vocabulary."""
    ids = torch.tensor([[START] + list(s[:-1]) for s in sequences])
    logits = full_logits(model, ids, "t5", torch.tensor([source]).expand(len(sequences), -1))
    log_probs = torch.log_softmax(logits[..., :SMALL_VOCAB].double(), dim=-1)
    return log_probs.gather(-1, torch.tensor([list(s) for s in sequences])[..., None]).squeeze(-1)


def _score(model, source, tokens, length_penalty=1.0):
    return float(_token_log_probs(model, source, [tokens]).sum()) / len(tokens) ** length_penalty


def _exhaustive_best(model, source, length, length_penalty):
    """(tokens, score) of the best of every answer of at most `length` tokens (cut after its first eos)."""
    sequences = list(itertools.product(range(SMALL_VOCAB), repeat=length))
    rows = _token_log_probs(model, source, sequences).tolist()
    scores = {}
    for sequence, row in zip(sequences, rows):
        n = sequence.index(EOS) + 1 if EOS in sequence else length
        scores[sequence[:n]] = sum(row[:n]) / n ** length_penalty
    best = max(scores, key=scores.get)
    return list(best), scores[best]


@pytest.mark.quick
def test_beam_size_1_decodes_the_greedy_tokens():
    with single_process_world():
        model = tiny_t5()
        greedy = _greedy(model, SOURCES, 6)
        beams = _search(model, SOURCES, 1, 6)
    assert [beam.tokens for beam in beams] == greedy
    ended = [tokens[-1] == EOS for tokens in greedy]
    assert any(ended) and not all(ended), greedy      # both ways of stopping are exercised


@pytest.mark.quick
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_a_beam_keeping_every_candidate_finds_the_exhaustive_search_best(length_penalty):
    # At step t there are at most 4 ** (t - 1) * 5 <= 320 candidates of finite score: a beam of
    # 320 keeps every live prefix and every finished answer, so it must find the optimum.
    sources, length = SOURCES, 4
    with single_process_world():
        model = tiny_t5()
        beams = _search(model, sources, 320, length, length_penalty)
        expected = [_exhaustive_best(model, source, length, length_penalty) for source in sources]
    for beam, (tokens, score) in zip(beams, expected):
        assert beam.tokens == tokens
        assert beam.score == pytest.approx(score, abs=1e-5)


@pytest.mark.quick
def test_a_beam_of_3_scores_at_least_the_greedy_answer_and_reports_the_full_forward_score():
    with single_process_world():
        model = tiny_t5()
        greedy = _greedy(model, SOURCES, 6)
        beams = _search(model, SOURCES, 3, 6)
        greedy_scores = [_score(model, source, tokens) for source, tokens in zip(SOURCES, greedy)]
        beam_scores = [_score(model, source, beam.tokens) for source, beam in zip(SOURCES, beams)]
    assert [beam.score for beam in beams] == pytest.approx(beam_scores, abs=1e-5)
    assert all(b >= g - 1e-9 for b, g in zip(beam_scores, greedy_scores)), (beam_scores, greedy_scores)
    assert any(b > g + 1e-3 for b, g in zip(beam_scores, greedy_scores)), (beam_scores, greedy_scores)


PARALLEL_VOCAB = 40             # ids on both ranks at TP=2 (32 of the 64 each)


def _parallel_beams(model):
    beams = _search(model, SOURCES, 3, 5, vocab=PARALLEL_VOCAB)
    return [(beam.tokens, beam.score) for beam in beams]


def _beams_in_layouts(expected):
    for tp, pp in ((2, 1), (1, 2)):
        mpu.initialize_model_parallel(tp, pp, pipeline_model_parallel_split_rank=1 if pp > 1 else None)
        got = _parallel_beams(tiny_t5(tp=tp, stage=mpu.get_pipeline_stage()))
        assert [tokens for tokens, _ in got] == [tokens for tokens, _ in expected], (tp, pp, got, expected)
        assert [score for _, score in got] == pytest.approx([score for _, score in expected], abs=1e-5)
        mpu.destroy_model_parallel()


def test_tp2_and_pp2_beam_search_finds_the_serial_beams():
    with single_process_world():
        expected = _parallel_beams(tiny_t5())
    run_distributed(_beams_in_layouts, 2, expected)


def test_predict_t5_with_beams_writes_the_single_process_predictions_at_tp2(tmp_path):
    checkpoint = write_tiny_checkpoint(str(tmp_path / "ckpt"), "t5")
    data = tmp_path / "few.jsonl"
    sources = ("清华大学位于北京", "今天天气很好", "机器学习")
    rows = [{"source": source, "target": "北京"} for source in sources]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    flags = ["--load", checkpoint, "--predict-data", str(data), "--batch-size", "2", "--max-target-length", "4",
             "--beam-size", "3", "--length-penalty", "0.5"]
    predictions = {}
    for name, nproc in (("tp1", None), ("tp2", 2)):
        output = str(tmp_path / f"{name}.jsonl")
        run_flags = flags + ["--predict-output", output]
        done = run_forked("tools/predict_t5.py", run_flags) if nproc is None else \
            run_ranks("tools/predict_t5.py", run_flags + ["--tensor-model-parallel-size", "2"], nproc)
        assert done.returncode == 0, failure_report(done)
        with open(output, encoding="utf-8") as f:
            predictions[name] = [json.loads(line)["prediction"] for line in f]
    assert len(predictions["tp1"]) == 3 and any(predictions["tp1"]), predictions
    assert predictions["tp2"] == predictions["tp1"]


@pytest.mark.quick
@pytest.mark.parametrize("flag,value,named", [("--beam-size", "0", "--beam-size must be at least 1"),
                                               ("--length-penalty", "nan", "--length-penalty must be a finite")])
def test_a_bad_beam_flag_is_one_sentence(tmp_path, flag, value, named):
    with pytest.raises(ConfigError) as raised:
        run_tool_main("predict_t5.py", "--load", tmp_path, "--predict-data", tmp_path / "in.jsonl",
                      "--predict-output", tmp_path / "out.jsonl", flag, value)
    message = str(raised.value)
    assert message.startswith(named) and message.endswith(".") and "\n" not in message, message
