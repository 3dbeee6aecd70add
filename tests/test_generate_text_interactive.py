"""tools/generate_text.py interactively, through a real pseudo-terminal: a user types two
prompts and reads each continuation as it is printed (the greedy tokens of recomputing
the whole sequence; for Transformer-XL the second turn continues from the first turn's
memory); Ctrl-D or an empty line ends the session with exit status 0."""
import pytest
import torch

from megatron_core import mpu
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.inference.checkpoint_model import load_checkpoint_model
from megatron_core.inference.sampling import SamplingParams
from megatron_core.inference.transformer_xl import TransformerXLSession
from tests.harness.entry_points import clean_env, entry_point_command
from tests.harness.inference_checkpoints import write_tiny_checkpoint
from tests.harness.inference_models import greedy_by_recomputation
from tests.harness.terminal import Terminal
from tests.harness.tiny_corpus import BERT_VOCAB, ROOT
from tests.harness.model_checks import single_process_world

PROMPTS = ["清华大学位于北京", "今天天气"]
NEW = 5


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)


def _continuation(tokenizer, prompt_ids, new_ids):
    """What the tool prints after the prompt: the new text where the tokenizer places it."""
    return tokenizer.detokenize(prompt_ids + new_ids)[len(tokenizer.detokenize(prompt_ids)):]


def _terminal(ckpt):
    flags = ["--load", ckpt, "--greedy", "--out-seq-length", str(NEW)]
    return Terminal(entry_point_command("tools/generate_text.py", flags), env=clean_env(), cwd=ROOT)


def test_two_typed_prompts_stream_their_greedy_continuations_and_ctrl_d_exits(tmp_path, tokenizer):
    ckpt = write_tiny_checkpoint(str(tmp_path / "gpt"), "gpt")
    with single_process_world():
        mpu.destroy_model_parallel()        # the loader initializes model parallelism itself
        model = load_checkpoint_model(ckpt).model
        ids = [tokenizer.tokenize(p) for p in PROMPTS]
        expected = [greedy_by_recomputation(lambda x: model(x)[0, -1], p, NEW, tokenizer.vocab_size) for p in ids]
    with _terminal(ckpt) as term:
        term.expect("prompt> ")
        for prompt, prompt_ids, new_ids in zip(PROMPTS, ids, expected):
            term.send(prompt + "\n")
            shown = term.expect("prompt> ")
            assert shown.startswith(prompt + "\n"), shown          # the terminal echoes the typed line
            assert shown.endswith(prompt + _continuation(tokenizer, prompt_ids, new_ids) + "\nprompt> "), shown
        term.send("\x04")                                          # Ctrl-D: end of input
        assert term.wait() == 0, term.output
        assert "Traceback" not in term.output


def test_transformer_xl_turns_continue_from_the_memory_and_an_empty_line_exits(tmp_path, tokenizer):
    ckpt = write_tiny_checkpoint(str(tmp_path / "txl"), "transformer_xl")
    ids = [tokenizer.tokenize(p) for p in PROMPTS]
    with single_process_world():
        mpu.destroy_model_parallel()
        loaded = load_checkpoint_model(ckpt)
        session = TransformerXLSession(loaded.model, loaded.vocab_size)
        greedy = SamplingParams(greedy=True)
        expected = [session.generate([p], NEW, greedy).tokens[0] for p in ids]
        session.reset()
        without_memory = session.generate([ids[1]], NEW, greedy).tokens[0]
    assert expected[1] != without_memory        # the second turn depends on the first
    with _terminal(ckpt) as term:
        term.expect("you> ")
        for prompt, prompt_ids, new_ids in zip(PROMPTS, ids, expected):
            term.send(prompt + "\n")
            shown = term.expect("you> ")
            assert shown.endswith(prompt + _continuation(tokenizer, prompt_ids, new_ids) + "\nyou> "), shown
        term.send("\n")                                            # an empty line ends the session
        assert term.wait() == 0, term.output
        assert term.rest().strip() == "" and "Traceback" not in term.output


def test_transformer_xl_prompts_of_other_lengths_each_start_from_an_empty_memory(tmp_path, tokenizer):
    """--input-file / the server batch prompts; Transformer-XL rows run in lockstep, so
    prompts of different lengths run one by one, each as a fresh text."""
    from megatron_core.inference.text_generation import TextGenerator

    ckpt = write_tiny_checkpoint(str(tmp_path / "txl"), "transformer_xl")
    greedy = SamplingParams(greedy=True)
    with single_process_world():
        mpu.destroy_model_parallel()
        loaded = load_checkpoint_model(ckpt)
        batch = TextGenerator(loaded, tokenizer).generate(PROMPTS, NEW, greedy)
        session = TransformerXLSession(loaded.model, loaded.vocab_size)
        alone = []
        for prompt in PROMPTS:
            session.reset()
            alone.append(session.generate([tokenizer.tokenize(prompt)], NEW, greedy).tokens[0])
    assert [item.tokens for item in batch] == alone
