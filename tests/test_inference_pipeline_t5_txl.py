"""T5 and Transformer-XL generate at PP=2 the tokens of one stage, in a real 2-process gloo
pipeline: T5 with its encoder on stage 0 and its decoder on stage 1 (the encoder output
broadcast once, the decoder's steps on stage 1 alone), greedy and seeded top-k, prompts
of different lengths; Transformer-XL over three turns, each stage keeping the memory of
its own layer, greedy and seeded top-p."""
import torch

from megatron_core import mpu
from megatron_core.inference.decoders import T5Decoder
from megatron_core.inference.generation import generate
from megatron_core.inference.sampling import SamplingParams
from megatron_core.inference.transformer_xl import TransformerXLSession
from tests.harness import run_distributed
from tests.harness.inference_models import VOCAB, random_prompts, tiny_t5, tiny_transformer_xl
from tests.harness.model_checks import single_process_world

T5_PROMPTS = random_prompts([5, 3], seed=11)
TXL_TURNS = random_prompts([4, 3, 5], seed=12)
NEW_TOKENS = 5
START = 1
SETTINGS = {"greedy": SamplingParams(greedy=True),
            "top_k": SamplingParams(temperature=0.9, top_k=4, seed=5),
            "top_p": SamplingParams(temperature=1.1, top_p=0.8, seed=6)}


def _t5_tokens(model):
    return {name: generate(T5Decoder(model, START), T5_PROMPTS, NEW_TOKENS, SETTINGS[name], VOCAB).tokens
            for name in ("greedy", "top_k")}


def _txl_turns(model):
    turns = {}
    for name in ("greedy", "top_p"):
        session = TransformerXLSession(model, VOCAB)
        turns[name] = [session.generate([prompt], NEW_TOKENS, SETTINGS[name]).tokens for prompt in TXL_TURNS]
    return turns


def _serial():
    with single_process_world():
        return _t5_tokens(tiny_t5()), _txl_turns(tiny_transformer_xl())


def _pipelined(expected_t5, expected_txl):
    mpu.initialize_model_parallel(1, 2, pipeline_model_parallel_split_rank=1)
    t5 = tiny_t5(stage=mpu.get_pipeline_stage())
    assert (t5.add_encoder, t5.add_decoder) == ((True, False) if mpu.get_pipeline_model_parallel_rank() == 0
                                                else (False, True))
    assert _t5_tokens(t5) == expected_t5
    mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(1, 2)
    txl = tiny_transformer_xl(stage=mpu.get_pipeline_stage())
    assert len(txl.layers) == 1
    assert _txl_turns(txl) == expected_txl, torch.distributed.get_rank()


def test_t5_and_transformer_xl_at_pp2_generate_the_single_stage_tokens():
    expected_t5, expected_txl = _serial()
    assert expected_t5["greedy"] != expected_t5["top_k"]
    run_distributed(_pipelined, 2, expected_t5, expected_txl)
