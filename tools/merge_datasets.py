#!/usr/bin/env python
"""Merge several Megatron indexed datasets (.bin/.idx) into one.

    python tools/merge_datasets.py --input data/shards/ --output-prefix data/zh_text_document
    python tools/merge_datasets.py --input data/a_text_document data/b_text_document \\
        --output-prefix data/ab_text_document

--input is a directory (every .idx/.bin pair in it, in name order) or a list of dataset
prefixes (in the order given). The result holds the inputs' documents one after another,
so it is the same as preprocessing the concatenated corpora. All inputs must come from the
same tokenizer (same token dtype). The output is written under temporary names and renamed.
Every index entry of the inputs is checked first (IndexedDataset.verify; --no-verify skips it).
"""
import argparse
import os
import sys
import time

from megatron_core.cli import run
from megatron_core.data.indexed_dataset import find_datasets, merge_datasets
from megatron_core.errors import DataError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+",
                   help="a directory of .bin/.idx pairs, or dataset prefixes (without .bin/.idx)")
    p.add_argument("--output-prefix", required=True,
                   help="writes {prefix}.bin and {prefix}.idx")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="check every index entry of every input before merging (default; a "
                        "vectorised pass over the .idx files, milliseconds per million entries). "
                        "A damaged input merged without it becomes a consistent but wrong result.")
    return p.parse_args(argv)


def resolve_inputs(inputs):
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        return find_datasets(inputs[0])
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            raise DataError(f"--input {item} is a directory; give either one directory or a "
                            f"list of dataset prefixes, not both.")
        for ext in (".bin", ".idx"):  # accept data/a.bin as a spelling of data/a
            if item.endswith(ext):
                item = item[: -len(ext)]
        prefixes.append(item)
    return prefixes


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    prefixes = resolve_inputs(args.input)
    merged = merge_datasets(prefixes, args.output_prefix, verify=args.verify)
    tokens = int(merged.sequence_lengths.sum(dtype="int64"))
    print(f"merged {len(prefixes)} datasets in {time.perf_counter() - start:.1f} s"
          f"{' (inputs verified)' if args.verify else ''}: {merged.num_documents} documents, "
          f"{len(merged)} sequences, {tokens} tokens ({merged.dtype}) -> "
          f"{args.output_prefix}.bin/.idx", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
