"""pretrain_t5.py and pretrain_transformer_xl.py run as users run them (plain python and torchrun).

A parallel layout logs, step for step, the losses of the single-process run of the same
flags (fp32, no dropout, relative 1e-5): T5 with its encoder and decoder on two pipeline
stages, Transformer-XL with its segment memory split over two pipeline stages and over two
tensor-parallel ranks. Transformer-XL's memory changes the losses (it is used), and
evaluating between steps does not (validation runs on a memory of its own). Each script's
reference run is `python script`, and its pipeline layout runs under torchrun; the other
runs fork from the session's fork server (entry_points.run_forked, run_ranks).
"""
import pytest

from tests.harness import find_free_port
from tests.harness.entry_points import corpus_flags, logged_values, run_entry_point, run_forked, run_ranks

STEPS = 5
TINY = ["--hidden-size", "32", "--num-attention-heads", "4", "--micro-batch-size", "2", "--global-batch-size", "8",
        "--train-iters", str(STEPS), "--lr", "1e-2", "--lr-decay-style", "constant", "--hidden-dropout", "0",
        "--attention-dropout", "0", "--log-interval", "1"]
NO_EVALUATION = ["--eval-iters", "0"]
EVALUATION_BETWEEN_STEPS = ["--eval-interval", "2", "--eval-iters", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus"))


def _losses(script, flags, nproc=None, forked=False):
    """The logged lm losses and stdout of `python script` (nproc None), torchrun (nproc), or forked
    from the session's fork server (forked: one process, or `nproc` ranks)."""
    if forked:
        done = run_forked(script, flags) if nproc is None else run_ranks(script, flags, nproc)
    else:
        done = run_entry_point(script, flags, nproc)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == list(range(1, STEPS + 1)), done.stdout[-2000:]
    return losses, done.stdout


def _assert_same_losses(got, expected):
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), (step, got, expected)


# --- T5 --------------------------------------------------------------------------------------------------

def t5_flags(corpus):
    return corpus_flags(corpus, sentences=True) + TINY + [
        "--encoder-num-layers", "2", "--decoder-num-layers", "2", "--encoder-seq-length", "64",
        "--decoder-seq-length", "16", "--eval-interval", str(STEPS), "--eval-iters", "1"]


@pytest.fixture(scope="module")
def t5_serial(corpus):
    losses, stdout = _losses("pretrain_t5.py", t5_flags(corpus))
    assert "validation loss at iteration 5 | lm loss value:" in stdout
    return losses


def test_t5_single_process_learns(t5_serial):
    assert t5_serial[STEPS] < t5_serial[1]


def test_t5_encoder_and_decoder_on_two_pipeline_stages_log_the_single_process_losses(corpus, t5_serial):
    flags = t5_flags(corpus) + ["--pipeline-model-parallel-size", "2", "--pipeline-model-parallel-split-rank", "1"]
    losses, _ = _losses("pretrain_t5.py", flags, nproc=2)
    _assert_same_losses(losses, t5_serial)


def test_t5_pipeline_without_a_split_rank_is_one_sentence_before_any_process_group(corpus):
    # WORLD_SIZE=2 with no second process: any rendezvous would hang until the timeout.
    launched = dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(find_free_port()))
    done = run_entry_point("pretrain_t5.py", t5_flags(corpus) + ["--pipeline-model-parallel-size", "2"], timeout=60,
                           env=launched)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --pipeline-model-parallel-size 2"), done.stderr
    assert "--pipeline-model-parallel-split-rank" in lines[0]


# --- Transformer-XL ---------------------------------------------------------------------------------------

def transformer_xl_flags(corpus, mem_length=32):
    return corpus_flags(corpus) + TINY + ["--num-layers", "2", "--seq-length", "32", "--mem-length", str(mem_length)]


@pytest.fixture(scope="module")
def transformer_xl_serial(corpus):
    losses, _ = _losses("pretrain_transformer_xl.py", transformer_xl_flags(corpus) + NO_EVALUATION)
    assert losses[STEPS] < losses[1]
    return losses


def test_transformer_xl_memory_changes_the_losses(corpus, transformer_xl_serial):
    # Segment k + 1 of a row attends to segment k of the same text: without memory it cannot.
    without, _ = _losses("pretrain_transformer_xl.py", transformer_xl_flags(corpus, mem_length=0) + NO_EVALUATION,
                         forked=True)
    assert without[1] == pytest.approx(transformer_xl_serial[1], rel=1e-6)   # the first segment has no memory
    differences = [abs(without[s] - transformer_xl_serial[s]) / transformer_xl_serial[s] for s in range(2, STEPS + 1)]
    assert max(differences) > 1e-4, differences   # well beyond the 1e-5 the layouts are held to


def test_transformer_xl_evaluation_between_steps_leaves_the_training_losses_unchanged(corpus, transformer_xl_serial):
    losses, stdout = _losses("pretrain_transformer_xl.py", transformer_xl_flags(corpus) + EVALUATION_BETWEEN_STEPS,
                             forked=True)
    assert "validation loss at iteration 2 |" in stdout and "validation loss at iteration 4 |" in stdout
    assert losses == transformer_xl_serial


# PP=2 under torchrun (the family's launcher run); TP=2's ranks fork, the layout being the subject.
@pytest.mark.parametrize("layout,forked", [(["--pipeline-model-parallel-size", "2"], False),
                                           (["--tensor-model-parallel-size", "2"], True)], ids=["pp2", "tp2"])
def test_transformer_xl_parallel_layout_with_memory_and_evaluation_logs_the_single_process_losses(
        corpus, transformer_xl_serial, layout, forked):
    flags = transformer_xl_flags(corpus) + EVALUATION_BETWEEN_STEPS + layout
    losses, _ = _losses("pretrain_transformer_xl.py", flags, nproc=2, forked=forked)
    _assert_same_losses(losses, transformer_xl_serial)
