#!/usr/bin/env python
"""GPT sample reads and sample-index builds on a real corpus; prints JSON.

    python -m bench.dataset_read [--input /work/shared/data/zh_news_1998.jsonl] [--copies 8]
                                 [--seq-length 2048] [--reads 20000] [--epochs 10]

1. Preprocesses the corpus (BERT Chinese vocab, --append-eod) into a temporary directory
   and merges `--copies` copies of it into one dataset (real document lengths, more of them).
2. Random reads: GPTDataset[i] at random i (a sample of seq_length + 1 int64 tokens,
   usually spanning several documents) against the floor, a raw numpy memmap slice of
   the same .bin with the same token count at a random offset, converted to int64 the
   same way. Reports mean / p50 / p99 microseconds and gpt_over_raw = mean GPT / mean raw
   (gpt_over_raw_p50 for the medians). Also the same GPT samples read one document at a
   time, the path without IndexedDataset.gather.
   The file is in the page cache (read once before timing), so this measures the index
   arithmetic and Python overhead, not the disk.
3. Index builds: the sample index for `--epochs` epochs with the C++ helper and with the
   numpy fallback (same inputs, identical outputs checked), and the whole GPTDataset
   index build (doc_idx, sample_idx, shuffle_idx; empty cache) with each backend.
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

from megatron_core.cli import run
from megatron_core.data import index_helpers
from megatron_core.data.gpt_dataset import GPTDataset, build_doc_idx
from megatron_core.data.indexed_dataset import IndexedDataset, merge_datasets
from megatron_core.data.preprocess import PreprocessOptions, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "tests", "data", "vocab", "bert-base-chinese-vocab.txt")


class _PerDocumentReads:
    """An IndexedDataset seen without its gather method."""

    def __init__(self, ds):
        self.get = ds.get


def latency_stats(ns):
    us = np.asarray(ns, dtype=np.float64) / 1e3
    return {"mean_us": round(float(us.mean()), 2), "p50_us": round(float(np.percentile(us, 50)), 2),
            "p99_us": round(float(np.percentile(us, 99)), 2)}


def timed_reads(fn, indices):
    clock = time.perf_counter_ns
    out = []
    for i in indices:
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default="/work/shared/data/zh_news_1998.jsonl")
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args(argv)
    if index_helpers._compiled is None:
        raise SystemExit("the C++ dataset helpers are not built; run `pip install -e .` first.")

    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "zh")
        preprocess(PreprocessOptions(input=args.input, output_prefix=base, vocab_file=VOCAB,
                                     tokenizer_type="BertWordPieceLowerCase", append_eod=True,
                                     workers=2, log_interval=0), log=lambda m: None)
        prefix = os.path.join(tmp, "corpus")
        merge_datasets([base + "_text_document"] * args.copies, prefix)
        ds = IndexedDataset(prefix)
        tokens = int(ds.sequence_lengths.sum(dtype=np.int64))
        L = args.seq_length
        rng = np.random.default_rng(0)

        # --- random reads ---------------------------------------------------------
        gpt = GPTDataset(ds, (0, len(ds)), None, L, seed=1234, cache_dir=os.path.join(tmp, "cache"))
        raw = np.memmap(prefix + ".bin", dtype=ds.dtype, mode="r")
        np.asarray(raw).sum()  # into the page cache
        gpt_idx = rng.integers(0, len(gpt), args.reads)
        raw_idx = rng.integers(0, tokens - L - 1, args.reads)
        for i in gpt_idx[:500]:  # warm-up
            gpt[int(i)]
        assert gpt[0]["text"].shape == (L + 1,) and gpt[0]["text"].dtype == np.int64
        gpt_ns = timed_reads(lambda i: gpt[int(i)], gpt_idx)
        raw_ns = timed_reads(lambda s: raw[s:s + L + 1].astype(np.int64), raw_idx)
        # the same samples read one document at a time (GPTDataset's path for datasets
        # without IndexedDataset.gather), to show what the gather saves
        gpt.indexed_dataset = _PerDocumentReads(ds)
        loop_ns = timed_reads(lambda i: gpt[int(i)], gpt_idx)
        gpt.indexed_dataset = ds
        reads = {"gpt_sample": latency_stats(gpt_ns), "raw_memmap_slice": latency_stats(raw_ns),
                 "gpt_sample_per_document_reads": latency_stats(loop_ns)}
        reads["gpt_over_raw"] = round(reads["gpt_sample"]["mean_us"] / reads["raw_memmap_slice"]["mean_us"], 2)
        # the median is what a steady reader sees; the mean also carries preemptions
        reads["gpt_over_raw_p50"] = round(reads["gpt_sample"]["p50_us"] / reads["raw_memmap_slice"]["p50_us"], 2)
        lengths = np.asarray(ds.sequence_lengths, dtype=np.float64)
        reads["mean_documents_per_sample"] = round(L / float(lengths.mean()) + 1, 1)

        # --- index builds -----------------------------------------------------------
        sizes = np.array(ds.sequence_lengths)
        doc_idx = build_doc_idx(np.arange(len(ds), dtype=np.int32), args.epochs,
                                np.random.RandomState(0), False)
        build = lambda: index_helpers.build_sample_idx(sizes, doc_idx, L, args.epochs, tokens)  # noqa: E731
        cpp_s, cpp_idx = best_of(build)
        compiled = index_helpers._compiled
        index_helpers._compiled = None
        try:
            numpy_s, numpy_idx = best_of(build)
            numpy_full_s, _ = best_of(lambda: GPTDataset(
                ds, (0, len(ds)), args.epochs * (tokens // L), L, seed=7,
                cache_dir=tempfile.mkdtemp(dir=tmp)), repeats=1)
        finally:
            index_helpers._compiled = compiled
        cpp_full_s, _ = best_of(lambda: GPTDataset(
            ds, (0, len(ds)), args.epochs * (tokens // L), L, seed=7,
            cache_dir=tempfile.mkdtemp(dir=tmp)), repeats=1)
        assert np.array_equal(cpp_idx, numpy_idx), "C++ and numpy sample indices differ"
        weights = np.array([0.3, 0.5, 0.2])
        blend_n = 2_000_000
        cpp_blend_s, _ = best_of(lambda: index_helpers.build_blending_indices(weights, blend_n), 1)
        numpy_blend_s, _ = best_of(lambda: index_helpers.numpy_build_blending_indices(weights, blend_n), 1)

    print(json.dumps({
        "bench": "dataset_read",
        "dataset": {"source": os.path.basename(args.input), "copies": args.copies,
                    "documents": int(ds.num_documents), "tokens": tokens, "dtype": str(ds.dtype)},
        "seq_length": L, "reads": args.reads,
        "random_read": reads,
        "sample_index_build": {
            "epochs": args.epochs, "documents_in_doc_idx": int(len(doc_idx)),
            "samples": int(len(cpp_idx) - 1),
            "cpp_s": round(cpp_s, 4), "numpy_s": round(numpy_s, 4),
            "numpy_over_cpp": round(numpy_s / cpp_s, 1),
            "gptdataset_full_build_cpp_s": round(cpp_full_s, 3),
            "gptdataset_full_build_numpy_s": round(numpy_full_s, 3),
        },
        "blending_index_build": {"samples": blend_n, "datasets": len(weights),
                                 "cpp_s": round(cpp_blend_s, 3), "numpy_s": round(numpy_blend_s, 3)},
    }, indent=2))


if __name__ == "__main__":
    run(main)
