"""The manifest of a saved checkpoint: every file it wrote, with its size and checksums, so a
load finds a file damaged after the save (a flipped byte, a truncated or missing file)
before any weight is used.

    <save>/iter_0000006/checkpoint_manifest.json     (DeepSpeed layout: <save>/global_step6/...)
    {"format": "megatron_core checkpoint manifest", "version": 1, "checksum": "crc32", "block_bytes": 67108864,
     "files": {"mp_rank_00/model_optim_rng.pt": {"size": 1029554173, "crc32": [3871203432, ...]},
               "mp_rank_00/distrib_optim_dp_001.pt": {"size": 4194717, "crc32": [...], "optimizer_only": true}}}

Who writes it. Every rank checksums the files it writes as it writes them (checksums.py) and
reports the records with its success; rank 0 writes the manifest after every rank reported,
atomically, and then the tracker. So a save stays as parallel as before (the checksums cost
each rank one pass over its own bytes, in memory, and rank 0 one small JSON file), and a
manifest exists only for a complete save. One manifest per iteration rather than one per
rank file: a load opens one small file to know every file the checkpoint must have, a
missing rank file included (a per-file manifest would go missing with its file).

Its name. Megatron-LM opens the files of an iteration by name (mp_rank_XX/model_optim_rng.pt;
torch_dist: metadata.json, common.pt, and the .distcp files its .metadata names), DeepSpeed
too and by the patterns *_model_states.pt / *_optim_states.pt; none of them lists a
directory for other files, so checkpoint_manifest.json is invisible to both. Checkpoints
without one (saved before manifests, by Megatron-LM, DeepSpeed, or converted) load as before.

Checking (find_damage): the files a load will read: all of them, or, for a weights-only load,
all but those holding optimizer state alone. Sizes and presence always (one stat each);
checksums unless Verification(checksums=False) (--no-verify-checkpoint): every 64 MiB block
read back and crc32'd, on a few threads, and split over the ranks of a run
(verify_collectively: rank r takes every world-th block, then all ranks learn all findings).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch.distributed as dist

from ..atomic_files import write_atomically
from ..errors import CheckpointError
from .checksums import BLOCK_BYTES, FileRecord, block_checksum

MANIFEST = "checkpoint_manifest.json"
_FORMAT = "megatron_core checkpoint manifest"
_VERSION = 1
_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Verification:
    """What a load checks of a checkpoint that has a manifest."""
    checksums: bool = True       # False: sizes and presence only (--no-verify-checkpoint)
    optimizer: bool = True       # False: a weights-only load; files of optimizer state alone are not read


@dataclass(frozen=True)
class Damage:
    path: str
    what: str              # "is missing", "has 10 bytes, not the 20 its save wrote", ...

    def __str__(self) -> str:
        return f"{self.path} {self.what}"


def manifest_path(iteration_path: str) -> str:
    return os.path.join(iteration_path, MANIFEST)


def write_manifest(iteration_path: str, records: Sequence[FileRecord]) -> None:
    """The manifest of `records` (paths inside `iteration_path`), atomically and durably."""
    files = {}
    for record in sorted(records, key=lambda r: r.path):
        name = os.path.relpath(record.path, iteration_path)
        entry = {"size": record.size, "crc32": list(record.crc32)}
        if record.optimizer_only:
            entry["optimizer_only"] = True
        files[name.replace(os.sep, "/")] = entry
    # one line per file: a person reading it sees the file list
    head = json.dumps({"format": _FORMAT, "version": _VERSION, "checksum": "crc32", "block_bytes": BLOCK_BYTES})
    lines = ",\n".join(f" {json.dumps(name)}: {json.dumps(entry)}" for name, entry in files.items())
    text = f'{head[:-1]}, "files": {{\n{lines}\n}}}}\n'
    write_atomically(manifest_path(iteration_path), lambda f, _: f.write(text.encode()), durable=True)


def has_manifest(iteration_path: str) -> bool:
    return os.path.isfile(manifest_path(iteration_path))


def read_manifest(iteration_path: str) -> Optional[Dict]:
    """The manifest of `iteration_path`, None when it has none; ValueError when it is not readable."""
    path = manifest_path(iteration_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != _FORMAT or manifest.get("checksum") != "crc32":
            raise ValueError("not a manifest of this package")
        if manifest.get("version") != _VERSION:
            raise ValueError(f"version {manifest.get('version')}, this package reads {_VERSION}")
        for entry in manifest["files"].values():
            int(entry["size"]), [int(crc) for crc in entry["crc32"]]
        int(manifest["block_bytes"])
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from None
    return manifest


def _checked_files(manifest: Dict, verification: Verification) -> List[Tuple[str, Dict]]:
    return [(name, entry) for name, entry in sorted(manifest["files"].items())
            if verification.optimizer or not entry.get("optimizer_only")]


def find_damage(iteration_path: str, verification: Verification = Verification(),
                part: Tuple[int, int] = (0, 1)) -> List[Damage]:
    """What differs between `iteration_path` and its manifest (nothing without one). part =
    (index, count): this caller checks the sizes of every count-th file and the checksums of
    every count-th block from `index` (verify_collectively joins the parts)."""
    try:
        manifest = read_manifest(iteration_path)
    except ValueError as error:     # (json's decode error is one too)
        return [Damage(manifest_path(iteration_path), f"is not a readable manifest ({error})")] if part[0] == 0 else []
    if manifest is None:
        return []
    index, count = part
    block_bytes = int(manifest["block_bytes"])
    damage: List[Damage] = []
    blocks = []         # (path, first byte, length, saved crc32) to read
    item = 0
    for position, (name, entry) in enumerate(_checked_files(manifest, verification)):
        path = os.path.join(iteration_path, *name.split("/"))
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            size = None
        saved = int(entry["size"])
        if size != saved:
            if position % count == index:
                damage.append(Damage(path, "is missing" if size is None else
                                     f"has {size:,} bytes, not the {saved:,} its save wrote"))
            continue
        if not verification.checksums:
            continue
        for number, crc in enumerate(entry["crc32"]):
            if item % count == index:
                first = number * block_bytes
                blocks.append((path, first, min(block_bytes, saved - first), int(crc)))
            item += 1
    changed: Dict[str, Tuple[int, int]] = {}
    if blocks:
        with ThreadPoolExecutor(min(_THREADS, len(blocks))) as pool:
            found = list(pool.map(lambda block: block_checksum(*block[:3]), blocks))
        for (path, first, length, crc), got in zip(blocks, found):
            if got != crc:
                changed.setdefault(path, (first, first + length))
    for path, (first, end) in changed.items():
        damage.append(Damage(path, f"fails its checksum (bytes {first:,} to {end:,} differ from what its save "
                                   f"wrote)"))
    return sorted(damage, key=lambda d: d.path)


def verify_collectively(iteration_path: str, verification: Verification) -> List[Damage]:
    """find_damage with the work split over every rank of the run; all ranks get all findings
    (sorted by path), so they decide alike. Every rank must call it; without a process group it
    is find_damage."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return find_damage(iteration_path, verification)
    mine = find_damage(iteration_path, verification, (dist.get_rank(), dist.get_world_size()))
    everyone: List[Optional[List[Damage]]] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return sorted((d for found in everyone for d in found), key=lambda d: d.path)


def describe_damage(damage: Sequence[Damage]) -> str:
    """The first damaged file and how many more, as the start of a sentence."""
    more = len({d.path for d in damage}) - 1
    return str(damage[0]) + (f" (and {more} more damaged file{'s' if more > 1 else ''})" if more else "")


def restore_advice(iteration_path: str) -> str:
    """What to do about a damaged file (the end of the sentences that name one)."""
    return (f"restore the file from a copy (or, if it was changed on purpose, delete "
            f"{manifest_path(iteration_path)})")


def check_intact(iteration_path: str, verification: Optional[Verification], collectively: bool = False) -> None:
    """A readers' check (tools, resharding): one CheckpointError naming the first damaged file.
    verification None: nothing checked (the caller verified already). collectively: every rank
    calls, each checks a part (verify_collectively)."""
    if verification is None:
        return
    damage = (verify_collectively if collectively else find_damage)(iteration_path, verification)
    if damage:
        raise CheckpointError(f"{describe_damage(damage)}: the checkpoint in {iteration_path} was damaged after it "
                              f"was saved; {restore_advice(iteration_path)}, or use an earlier iteration's "
                              f"directory.")


__all__ = ["MANIFEST", "Damage", "Verification", "check_intact", "describe_damage", "find_damage", "has_manifest",
           "manifest_path", "read_manifest", "restore_advice", "verify_collectively", "write_manifest"]
