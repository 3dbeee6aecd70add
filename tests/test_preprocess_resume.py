"""tools/preprocess_data.py in partitions: killed (kill -9) and run again it resumes, and --partitions N
and --distributed give the bytes of one pass.

The reference is always one pass (`--partitions 1`: no progress folder, no merge), the path whose ids
tests/test_preprocess.py compares with HuggingFace's tokenizers. Runs are forked from the test's
process (tool_main.run_tool_forked, the imports paid once) as `python tools/preprocess_data.py ...`
runs, so a fault's SIGKILL (faults.py --kill-preprocess) is a real kill -9 of the run.
"""
import gzip
import importlib.util
import itertools
import os
import random
import re
import shutil

from megatron_core.data.partitions import automatic_partition_count, partition_ranges, ranks_share
from tests.harness.entry_points import failure_report, run_entry_point
from tests.harness.tiny_corpus import BERT_VOCAB, ROOT, TEST_DATA, ZH_NEWS
from tests.harness.tool_main import run_tool_forked

TOOL = "preprocess_data.py"
BERT = ["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB, "--append-eod"]
GPT2 = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", os.path.join(TEST_DATA, "vocab", "gpt2-vocab.json"),
        "--merge-file", os.path.join(TEST_DATA, "vocab", "gpt2-merges.txt"), "--append-eod"]
LINES = 200          # of the news slice


def corpus(directory) -> str:
    src = os.path.join(str(directory), "news.jsonl")
    shutil.copy(ZH_NEWS, src)
    return src


def run(src, prefix, *flags, faults=(), tokenizer=BERT):
    return run_tool_forked(TOOL, "--input", src, "--output-prefix", prefix, *tokenizer, "--log-interval", 0, *flags,
                           faults=faults)


def dataset_bytes(prefix):
    return [open(f"{prefix}_text_document{ext}", "rb").read() for ext in (".bin", ".idx")]


def one_pass(src, prefix):
    done = run(src, prefix, "--partitions", 1)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(f"{prefix}.progress")
    return dataset_bytes(prefix)


def test_partitions_begin_at_the_first_line_start_at_or_after_their_share_and_ranks_take_turns(tmp_path):
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":22}\n{"a":3}\n')       # partitions.py's worked example
    assert partition_ranges(str(path), 2) == [(0, 17), (17, 25)]
    assert partition_ranges(str(path), 3) == [(0, 8), (8, 17), (17, 25)]
    assert partition_ranges(str(path), 5) == [(0, 8), (8, 17), (17, 17), (17, 25), (25, 25)]
    rng = random.Random(0)
    lines = [b"x" * rng.randrange(0, 60) + b"\n" for _ in range(80)] + [b"a last line without a newline"]
    path.write_bytes(b"".join(lines))
    size = path.stat().st_size
    starts = [0, *itertools.accumulate(len(line) for line in lines[:-1])]
    for count in (1, 2, 3, 7, 80, 300):
        ranges = partition_ranges(str(path), count)
        assert len(ranges) == count and ranges[-1][1] == size
        assert all(end == next_start for (_, end), (next_start, _) in zip(ranges, ranges[1:]))
        assert [start for start, _ in ranges] == [min([s for s in starts if s >= k * size // count] + [size])
                                                  for k in range(count)]
    assert [ranks_share(list(range(7)), rank, 3) for rank in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert ranks_share([1, 4, 5, 6], 1, 2) == [4, 6]           # resumed: the partitions still to do, in turn
    mib = 1 << 20
    assert [automatic_partition_count(size, world) for size, world in
            ((0, 1), (256 * mib, 1), (256 * mib + 1, 1), (600 * mib, 2), (10, 4))] == [1, 1, 2, 4, 4]


def test_the_tool_takes_the_local_rank_flag_of_deepspeeds_launcher():
    spec = importlib.util.spec_from_file_location("preprocess_data", os.path.join(ROOT, "tools", TOOL))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse_args(["--input", "x", "--output-prefix", "y", "--tokenizer-type", "BertWordPieceLowerCase",
                            "--distributed", "--local_rank=1"])
    assert args.distributed and args.partitions is None


# kill -9 at this moment -> partitions the next run keeps
KILLS = {"writing": 0, "recording:2": 2, "merging": 4}


def test_killed_early_mid_run_or_while_merging_the_same_command_resumes_to_the_one_pass_bytes(tmp_path):
    src = corpus(tmp_path)
    expected = one_pass(src, str(tmp_path / "one"))
    for moment, kept in KILLS.items():
        out = tmp_path / moment.replace(":", "_")
        out.mkdir()
        flags = ["--partitions", 4, "--batch-lines", 10]
        killed = run(src, out / "zh", *flags, faults=["--kill-preprocess", moment])
        assert killed.returncode == -9, killed.stderr
        assert [name for name in os.listdir(out) if name.startswith("zh_")] == []     # nothing under a final name
        done = run(src, out / "zh", *flags)
        assert done.returncode == 0, done.stderr
        said = re.search(rf"resuming from {out}/zh.progress: kept {kept} of 4 partitions \((\d+) lines", done.stderr)
        assert said, done.stderr
        kept_lines = int(said.group(1))
        assert (kept_lines == 0) == (kept == 0) and (kept_lines == LINES) == (kept == 4)
        assert f"read {LINES - kept_lines} lines" in done.stderr        # a kept partition is not tokenized again
        assert dataset_bytes(out / "zh") == expected, moment
        assert sorted(os.listdir(out)) == ["zh_text_document.bin", "zh_text_document.idx"]   # progress removed


def test_a_changed_tokenizer_key_partition_count_or_input_does_not_resume_and_says_what_differs(tmp_path):
    src = corpus(tmp_path)
    prefix, progress = tmp_path / "zh", tmp_path / "zh.progress"
    assert run(src, prefix, "--partitions", 4, faults=["--kill-preprocess", "recording:2"]).returncode == -9
    changes = {
        "--tokenizer-type BertWordPieceLowerCase": run(src, prefix, "--partitions", 4, tokenizer=GPT2),
        "--json-keys text": run(src, prefix, "--partitions", 4, "--json-keys", "title"),
        "--partitions 4": run(src, prefix, "--partitions", 3),
    }
    stat = os.stat(src)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))     # touched: maybe another corpus now
    changes[f"--input {src} ({stat.st_size} bytes, modified "] = run(src, prefix, "--partitions", 4)
    for was, refused in changes.items():
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr
        assert lines[0].startswith(f"error: {progress} holds 2 of 4 finished partitions of a run with "), lines[0]
        assert was in lines[0] and lines[0].endswith(f"; run that command again to resume it, or delete "
                                                     f"{progress} to start over."), lines[0]
    assert "but this run has --tokenizer-type GPT2BPETokenizer, --vocab-file " in changes[
        "--tokenizer-type BertWordPieceLowerCase"].stderr
    # the refusals changed nothing: with the input as it was, the same command resumes
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    done = run(src, prefix, "--partitions", 4)
    assert done.returncode == 0 and "kept 2 of 4 partitions" in done.stderr, done.stderr
    assert dataset_bytes(prefix) == one_pass(src, str(tmp_path / "one"))


def test_a_gzip_input_is_not_partitioned_and_the_sentence_says_to_decompress_it(tmp_path):
    src = tmp_path / "news.jsonl.gz"
    with open(ZH_NEWS, "rb") as f, gzip.open(src, "wb") as out:
        out.write(f.read())
    refused = run(src, tmp_path / "zh", "--partitions", 2)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: --input {src} is gzip-compressed, which cannot be read from the middle as --partitions 2 needs; "
        f"decompress it first (gunzip -k {src}) and pass the .jsonl."]
    assert sorted(os.listdir(tmp_path)) == ["news.jsonl.gz"]


def test_four_partitions_on_two_workers_give_the_one_pass_bytes_and_line_numbers(tmp_path):
    with open(ZH_NEWS, encoding="utf-8") as f:
        lines = f.read().splitlines()
    bad = [3, 120, 181]                 # line numbers in the file, in partitions 0, 2 and 3
    for number in bad:
        lines.insert(number - 1, "{not json")
    src = tmp_path / "news_bad.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    one = run(src, tmp_path / "one", "--partitions", 1)
    four = run(src, tmp_path / "four", "--partitions", 4, "--workers", 2, "--batch-lines", 7)
    assert one.returncode == 0 and four.returncode == 0, four.stderr
    assert dataset_bytes(tmp_path / "four") == dataset_bytes(tmp_path / "one")
    for done in (one, four):
        assert [int(n) for n in re.findall(rf"skipping {src}, line (\d+): invalid JSON", done.stderr)] == bad
    summaries = [[line.split(" -> ")[0] for line in done.stderr.splitlines() if line.startswith("  ")]
                 for done in (one, four)]
    assert summaries[0] == summaries[1] and summaries[1][0].startswith(f"  text: {LINES} documents")
    assert summaries[1][1] == "  skipped 3 bad lines (invalid JSON: 3)"
    assert sorted(os.listdir(tmp_path)) == ["four_text_document.bin", "four_text_document.idx", "news_bad.jsonl",
                                            "one_text_document.bin", "one_text_document.idx"]


def test_distributed_under_torchrun_with_two_processes_gives_the_one_pass_bytes(tmp_path):
    src = corpus(tmp_path)
    expected = one_pass(src, str(tmp_path / "one"))
    done = run_entry_point(f"tools/{TOOL}", ["--input", src, "--output-prefix", str(tmp_path / "dist"), *BERT,
                                             "--log-interval", "0", "--distributed", "--partitions", "4"], nproc=2)
    assert done.returncode == 0, failure_report(done)
    assert dataset_bytes(tmp_path / "dist") == expected
    for rank in (0, 1):      # rank r took partitions r and r + 2
        assert re.search(rf"  rank {rank} on \S+: 2 partitions, \d+ documents, .* docs/s, .* MB/s\)", done.stderr)
    assert re.search(rf"  all 2 ranks: 4 partitions, {LINES} documents, .* docs/s, .* MB/s\)", done.stderr)
    assert not os.path.exists(tmp_path / "dist.progress")
