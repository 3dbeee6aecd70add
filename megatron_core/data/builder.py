"""Train, valid and test GPT datasets from `--data-path`, `--split` and the sample counts.

    train, valid, test = build_train_valid_test_datasets(
        ["0.3", "data/news_text_document", "0.7", "data/wiki_text_document"],
        "949,50,1", [train_iters * global_batch, eval_samples, test_samples],
        seq_length=2048, seed=1234)

With one prefix each split is a GPTDataset; with several, each split is a BlendedDataset
of per-prefix GPTDatasets, each asked for 0.5% more than its share (as Megatron-LM does)
so the blend never runs out. A split asked for 0 samples that has no documents (or a 0
share in --split) is None; a split asked for samples that gets no documents is a DataError.
`verify=True` (the `--verify` flag of the entry points) checks every index entry of every
dataset before anything is built (IndexedDataset.verify).

Under torch.distributed, rank 0 builds and caches the indices first while the other
ranks wait at a barrier, then load them from the cache; a rank that cannot see rank 0's
cache (a node-local disk) builds its own copy. Every rank must call this function.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

from megatron_core.data.blended_dataset import BlendedDataset, parse_data_path
from megatron_core.data.gpt_dataset import GPTDataset
from megatron_core.data.indexed_dataset import IndexedDataset
from megatron_core.data.splits import SPLIT_NAMES, parse_split, split_ranges
from megatron_core.errors import DataError

# Extra samples asked of each blended dataset beyond its weighted share.
BLEND_MARGIN = 1.005


def check_prefixes(prefixes: Sequence[str]) -> None:
    """Every --data-path prefix must have its .bin and .idx; checked before any index is built."""
    for prefix in prefixes:
        if IndexedDataset.exists(prefix):
            continue
        for ext in (".bin", ".idx"):
            if prefix.endswith(ext) and IndexedDataset.exists(prefix[: -len(ext)]):
                raise DataError(f"--data-path {prefix}: give the prefix without {ext}, i.e. "
                                f"{prefix[: -len(ext)]}.")
        raise DataError(f"no dataset at {prefix} ({prefix}.bin / {prefix}.idx); pass the prefix "
                        f"that tools/preprocess_data.py printed, without .bin or .idx.")


def _split_datasets(prefix: str, splits_string: str, num_samples: Sequence[int],
                    seq_length: int, seed: int, cache_dir: Optional[str],
                    verify: bool) -> List[Optional[GPTDataset]]:
    check_prefixes([prefix])
    indexed = IndexedDataset(prefix)
    if verify:
        indexed.verify()
    datasets = []
    shares = parse_split(splits_string)
    for name, share, (start, stop), count in zip(SPLIT_NAMES, shares, split_ranges(splits_string, len(indexed)),
                                                 num_samples):
        if stop <= start:
            # A zero share in --split asks for no such split (Megatron's meaning); a positive
            # share that rounds to no documents while samples are wanted is a mistake.
            if count > 0 and share > 0:
                raise DataError(
                    f"the {name} split of {prefix} gets no documents (--split {splits_string} "
                    f"over its {len(indexed)} documents) but {count} {name} samples are asked "
                    f"for; give {name} a larger share in --split, use more data, or ask for "
                    f"no {name} samples.")
            datasets.append(None)
            continue
        datasets.append(GPTDataset(indexed, (start, stop), int(count), seq_length, seed,
                                   cache_dir=cache_dir, split_name=name))
    return datasets


def _build(data_path, splits_string, num_samples, seq_length, seed, cache_dir, verify):
    weights, prefixes = parse_data_path(data_path)
    check_prefixes(prefixes)
    if len(prefixes) == 1:
        return _split_datasets(prefixes[0], splits_string, num_samples, seq_length, seed,
                               cache_dir, verify)

    # A weight-0 dataset could still win a float tie at deficit 0: leave it out entirely.
    pairs = [(w, p) for w, p in zip(weights, prefixes) if w > 0]
    per_prefix = []
    for weight, prefix in pairs:
        counts = [int(math.ceil(n * weight * BLEND_MARGIN)) for n in num_samples]
        per_prefix.append(_split_datasets(prefix, splits_string, counts, seq_length, seed,
                                          cache_dir, verify))

    blends = []
    for k in range(len(SPLIT_NAMES)):
        parts = [datasets[k] for datasets in per_prefix]
        # _split_datasets refused an empty part that was asked for samples, so a missing
        # part means this split is asked for none
        if any(part is None for part in parts):
            blends.append(None)
            continue
        blends.append(BlendedDataset(parts, [w for w, _ in pairs], num_samples[k],
                                     cache_dir=cache_dir))
    return blends


def build_train_valid_test_datasets(data_path: Union[str, Sequence[str]], splits_string: str,
                                    train_valid_test_num_samples: Sequence[int], seq_length: int,
                                    seed: int, cache_dir: Optional[str] = None,
                                    verify: bool = False):
    """(train, valid, test) datasets; see the module docstring."""
    num_samples = [int(n) for n in train_valid_test_num_samples]
    if len(num_samples) != 3 or any(n < 0 for n in num_samples):
        raise DataError(f"train_valid_test_num_samples is {list(train_valid_test_num_samples)}; "
                        f"give three non-negative sample counts (train, valid, test).")
    args = (data_path, splits_string, num_samples, seq_length, seed, cache_dir, verify)

    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return tuple(_build(*args))
    # Rank 0 fills the cache while the others wait, so N ranks do not build N copies.
    if dist.get_rank() == 0:
        try:
            result = _build(*args)
        finally:
            # Release the others even on failure: they then hit the same error themselves.
            dist.barrier()
    else:
        dist.barrier()
        result = _build(*args)
    return tuple(result)
