"""Fixtures shared by the entry-point tests: the tiny Chinese corpus and the plain PyTorch loop's run."""
import importlib.util

import pytest
import tqdm

from tests.harness.deepspeed_op_cache import finish_background_build, start_background_build
from tests.harness.engine_runs import SharedEngineRuns
from tests.harness.entry_points import plain_gpt_reference, tiny_gpt_flags
from tests.harness.tiny_corpus import preprocess_zh_news

# tqdm's monitor thread would outlive the progress bar that started it, and a process running
# a second thread forks unsafely: run_distributed would spawn its workers (5 s of imports each).
tqdm.tqdm.monitor_interval = 0


@pytest.fixture(scope="session")
def gpt_corpus(tmp_path_factory):
    """A directory holding zh_text_document.{bin,idx}: the news slice, one document a paragraph, with EOD."""
    directory = str(tmp_path_factory.mktemp("gpt_corpus"))
    preprocess_zh_news(directory)
    return directory


@pytest.fixture(scope="session")
def plain_gpt(gpt_corpus):
    """plain_gpt_loop on tiny_gpt_flags(gpt_corpus): {"losses": [...], "grad_norms": [...], ...}."""
    return plain_gpt_reference(tiny_gpt_flags(gpt_corpus))


@pytest.fixture(scope="session")
def engine_runs(gpt_corpus, tmp_path_factory):
    """DeepSpeed-engine runs on tiny_gpt_flags(gpt_corpus), each launched once by its first user
    (testing/engine_runs.py): the backend, checkpoint-tool and launcher tests share them."""
    return SharedEngineRuns(gpt_corpus, str(tmp_path_factory.mktemp("engine_runs")))


_op_build = None


def uses_deepspeed(item) -> bool:
    """Whether the test runs DeepSpeed's engine (its module uses deepspeed_test_env)."""
    return hasattr(getattr(item, "module", None), "deepspeed_test_env")


def pytest_collection_modifyitems(session, config, items):
    """The DeepSpeed tests run last, each file in its order: a cold op cache (CI's) is built by the
    background build meanwhile, on the CPU the other tests leave idle, instead of a DeepSpeed test
    waiting on its lock."""
    items[:] = [item for item in items if not uses_deepspeed(item)] + [item for item in items if uses_deepspeed(item)]


def pytest_collection_finish(session):
    """DeepSpeed's ops compile in the background from the start when a DeepSpeed test will run
    (its module uses deepspeed_test_env) and deepspeed is installed."""
    global _op_build
    wants = any(uses_deepspeed(item) for item in session.items)
    if wants and importlib.util.find_spec("deepspeed") is not None:
        _op_build = start_background_build()


def pytest_sessionfinish(session, exitstatus):
    finish_background_build(_op_build)
