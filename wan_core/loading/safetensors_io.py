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
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        dtype = _DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
        shape = tuple(entry["shape"])
        start, end = (base + o for o in entry["data_offsets"])
        if end - start != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} has {end - start} bytes; "
                                  "the file is damaged, re-download it")
        infos[name] = TensorInfo(dtype, shape, start, end)
    needed = max((i.end for i in infos.values()), default=base)
    if needed > size:
        raise CheckpointError(f"{path} is truncated: its header needs {needed} bytes but the file has {size}; "
                              "the download or copy did not finish, fetch the file again")
    return infos, metadata


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
