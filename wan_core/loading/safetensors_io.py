"""Reading safetensors files as memory-mapped tensors, with clear errors for damaged files.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and byte range, then the raw data. Tensors returned here are views into one
copy-on-write file mapping: nothing is read until a tensor is used, and a tensor that is only
moved or read never costs a second copy in memory.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in the file: dtype, shape and absolute byte range [start, end)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and check a safetensors header: ``({name: TensorInfo}, metadata)``.

    Raises :class:`CheckpointError` naming the file when it is not safetensors, is truncated, or
    describes a tensor whose byte range does not match its shape and dtype.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 1 or n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{path} is not a safetensors file (or its header is cut off): "
                                  f"header length {n}, file size {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} has an unreadable safetensors header ({err}); re-download it") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a {type(header).__name__}, not a table of "
                              "tensors; the file is damaged, re-download it")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: the safetensors metadata is not a table of strings; re-download the file")
    infos = {name: _tensor_info(path, name, entry, 8 + n) for name, entry in header.items()}
    _check_layout(path, infos, 8 + n, size)
    return infos, metadata


def _tensor_info(path: Path, name: str, entry, base: int) -> TensorInfo:
    """One header entry, checked: a dict with a known dtype, a shape of non-negative ints, two offsets."""
    damaged = f"{path}: the header entry of tensor {name!r} is damaged ({{}}); re-download the file"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise CheckpointError(damaged.format("it needs dtype, shape and data_offsets"))
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(damaged.format(f"shape {shape!r}"))
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        raise CheckpointError(damaged.format(f"data_offsets {offsets!r}"))
    start, end = base + offsets[0], base + offsets[1]
    if end - start != math.prod(shape) * dtype.itemsize:
        raise CheckpointError(f"{path}: tensor {name!r} of shape {tuple(shape)} has {end - start} bytes; "
                              "the file is damaged, re-download it")
    return TensorInfo(dtype, tuple(shape), start, end)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(path: Path, infos: dict[str, TensorInfo], base: int, size: int) -> None:
    """Tensor byte ranges must not overlap and must lie inside the file."""
    previous_end, previous = base, None
    for name, info in sorted(infos.items(), key=lambda item: (item[1].start, item[1].end)):
        if info.start < previous_end and info.end > info.start:
            raise CheckpointError(f"{path}: tensors {previous!r} and {name!r} overlap in the file; it is damaged, "
                                  "re-download it")
        if info.end > info.start:
            previous_end, previous = info.end, name
    needed = max((i.end for i in infos.values()), default=base)
    if needed > size:
        raise CheckpointError(f"{path} is truncated: its header needs {needed} bytes but the file has {size}; "
                              "the download or copy did not finish, fetch the file again")


def load_mmap(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file as CPU views into one copy-on-write memory map."""
    infos, _ = read_header(path)
    size = Path(path).stat().st_size
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    out = {}
    for name, info in infos.items():
        raw = buffer[info.start:info.end]
        if info.start % info.dtype.itemsize:  # unaligned data: copy this tensor out of the map
            raw = raw.clone()
        out[name] = raw.view(info.dtype).view(info.shape)
    return out
