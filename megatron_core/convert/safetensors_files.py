"""HuggingFace's safetensors weight files, written in shards and read lazily.

Written as save_pretrained writes them: tensors in order, a new shard whenever the next
tensor would take the current one past `max_shard_size` (a tensor larger than that gets
a shard of its own); one shard is `model.safetensors`, several are
`model-00001-of-00003.safetensors` ... plus `model.safetensors.index.json`
({"metadata": {"total_size": bytes}, "weight_map": {key: file}}), which from_pretrained
follows. The tensors come from an iterator and each shard is written (atomically) and
dropped as soon as it is full; the index is written last; weight files of an earlier
export that the new one does not name are removed.

Read: `SafetensorsWeights(dir)` is a Mapping over the file or the shards the index names,
opened with safetensors' safe_open: a tensor is read from disk only when it is asked for, and
the file's map is closed right after, so the pages read do not stay in the process.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Tuple, Union

import torch

from ..errors import ConfigError, ConversionError
from ..atomic_files import write_atomically
from ..checkpoint.file_io import write_bytes_atomically

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"          # huggingface_hub's split_torch_state_dict_into_shards default
_UNITS = {"KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12}
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_SHARD_NAME = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def parse_shard_size(value: Union[int, str]) -> int:
    """Bytes of a --max-shard-size: an int, or a number with KB, MB, GB or TB (powers of 10)."""
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]B)?\s*", str(value).upper())
        if not match:
            raise ConfigError(f"--max-shard-size {value!r} is not a size; give bytes or a number with KB, MB, GB "
                              f"or TB (e.g. 5GB).")
        size = int(float(match.group(1)) * _UNITS.get(match.group(2) or "", 1))
    if size < 1:
        raise ConfigError(f"--max-shard-size {value!r} must be at least one byte.")
    return size


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def write_safetensors(f, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """One safetensors file into the open binary file `f`, tensor by tensor: an 8-byte
    little-endian header length, the JSON header (padded with spaces to a multiple of 8, as
    safetensors aligns it), then each tensor's bytes in order. Nothing is copied into one buffer
    first (safetensors.torch.save would hold the whole file's bytes beside the tensors)."""
    header, offset = {"__metadata__": dict(metadata)}, 0
    for key, tensor in tensors.items():
        header[key] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + tensor_bytes(tensor)]}
        offset += tensor_bytes(tensor)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for tensor in tensors.values():
        f.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def write_safetensors_shards(output: str, tensors: Iterable[Tuple[str, torch.Tensor]],
                             max_shard_size: int) -> List[str]:
    """Write `tensors` (an iterator: each made only when the writer asks for it) into `output`
    in shards of at most `max_shard_size` bytes, in their order; returns the files written.
    A shard is written (under a temporary name, atomically) as soon as it is full, so memory
    holds one shard; the shards take their final names once their count is known."""
    os.makedirs(output, exist_ok=True)
    written: List[Tuple[str, List[str]]] = []     # (temporary file, its keys)
    current: Dict[str, torch.Tensor] = {}
    sizes: Dict[str, int] = {}

    def flush() -> None:
        temporary = os.path.join(output, f".model-shard-{len(written):05d}.safetensors.partial")
        write_atomically(temporary, lambda f, _: write_safetensors(f, current, {"format": "pt"}), durable=True)
        written.append((temporary, list(current)))
        current.clear()

    for key, tensor in tensors:
        if key in sizes:
            raise ConversionError(f"the HF weights hold {key!r} twice; the mapping is wrong, please report it.")
        sizes[key] = tensor_bytes(tensor)
        if current and sum(sizes[k] for k in current) + sizes[key] > max_shard_size:
            flush()
        current[key] = tensor.contiguous()
    if current or not written:
        flush()
    names = [SINGLE_FILE] if len(written) == 1 else \
        [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
    for (temporary, _), name in zip(written, names):
        os.replace(temporary, os.path.join(output, name))
    stale = [n for n in os.listdir(output) if (_SHARD_NAME.match(n) or n == SINGLE_FILE) and n not in names]
    if len(written) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())},
                 "weight_map": {key: name for (_, keys), name in zip(written, names) for key in keys}}
        write_bytes_atomically(os.path.join(output, INDEX_FILE), (json.dumps(index, indent=2) + "\n").encode())
    elif os.path.exists(os.path.join(output, INDEX_FILE)):
        stale.append(INDEX_FILE)
    for name in stale:
        os.remove(os.path.join(output, name))
    return names + ([INDEX_FILE] if len(written) > 1 else [])


class SafetensorsWeights(Mapping):
    """The weights of a save_pretrained directory's safetensors file(s), read key by key."""

    def __init__(self, hf_dir: str, skip: Callable[[str], bool] = lambda key: False):
        from safetensors import safe_open

        single, index = os.path.join(hf_dir, SINGLE_FILE), os.path.join(hf_dir, INDEX_FILE)
        if os.path.isfile(single):
            files = {None: single}
        else:
            with open(index) as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (ValueError, KeyError) as error:
                    raise ConversionError(f"{index} is not a safetensors index ({error}); re-save the model with "
                                          f"save_pretrained.") from None
            files = {name: os.path.join(hf_dir, name) for name in sorted(set(weight_map.values()))}
        self._paths = files
        self._handles = {name: safe_open(path, framework="pt") for name, path in files.items()}
        self._where = {key: name for name, handle in self._handles.items() for key in handle.keys() if not skip(key)}

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self._where:
            raise KeyError(key)
        # A fresh handle per tensor: safe_open maps the file, and the pages a read touches stay
        # resident (and counted) while that map lives; closing it leaves only the tensor's copy.
        with safe_open(self._paths[self._where[key]], framework="pt") as handle:
            return handle.get_tensor(key)

    def shape_and_dtype(self, key: str) -> Tuple[tuple, torch.dtype]:
        """From the file's header: nothing of the tensor is read."""
        piece = self._handles[self._where[key]].get_slice(key)
        return tuple(piece.get_shape()), _DTYPES[piece.get_dtype()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
