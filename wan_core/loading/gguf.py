"""GGUF DiT files (city96's layout for Wan: official key names, ``general.architecture`` "wan"), read with
the ``gguf`` package: tensors stay memory-mapped and quantized; Linear weights in a block format become
:class:`~wan_core.models.quantized.QuantizedLinear` layers that dequantize where they compute.

A tensor's shape is its ``comfy.gguf.orig_shape.<name>`` entry when the writer stored it reshaped, else its
ggml dimensions reversed (ggml lists the fastest-varying first).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.config import DiTConfig, detect
from ..models.dit import WanDiT
from ..models.quantized import BLOCKS, PLAIN, QuantizedLinear, dequantize
from ..runtime.placement import resolve_placement
from .checkpoint import check_keys

log = logging.getLogger(__name__)

ARCHITECTURE = "wan"
PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class QuantizedTensor:
    """One tensor of a GGUF file as stored: ``raw`` uint8 blocks (memory-mapped), its format and logical shape."""

    raw: torch.Tensor
    qtype: str
    shape: tuple[int, ...]


def _gguf():
    try:
        import gguf
    except ImportError as err:  # a runtime dependency, but say what to do if it is missing
        raise CheckpointError("reading .gguf files needs the gguf package: pip install gguf") from err
    return gguf


def _string_field(reader, name: str) -> str | None:
    field = reader.get_field(name)
    return None if field is None else str(bytes(field.parts[field.data[-1]]), encoding="utf-8")


def read_gguf(path: str | os.PathLike) -> dict[str, QuantizedTensor]:
    """Every tensor of a Wan2.1 DiT GGUF file by official name, still packed; the file stays memory-mapped.

    Raises :class:`CheckpointError` for a GGUF of another architecture or with a format we do not read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist; check the name and the models folder")
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # a damaged or truncated file: say which, not a numpy trace
        raise CheckpointError(f"{path.name}: not a readable GGUF file ({err}): damaged, or cut short "
                              "by an interrupted download; fetch it again") from err
    arch = _string_field(reader, "general.architecture")
    if arch != ARCHITECTURE:
        raise CheckpointError(f"{path.name} is a GGUF of architecture {arch!r}; a Wan2.1 diffusion model GGUF "
                              f"says {ARCHITECTURE!r} (city96's Wan files). Is it a text encoder or another model?")
    out, unsupported = {}, []
    for tensor in reader.tensors:
        qtype = tensor.tensor_type.name
        if qtype not in BLOCKS and qtype not in PLAIN:
            unsupported.append(f"{tensor.name} ({qtype})")
            continue
        shape_field = reader.get_field(f"comfy.gguf.orig_shape.{tensor.name}")
        shape = (tuple(int(shape_field.parts[i][0]) for i in shape_field.data) if shape_field is not None
                 else tuple(int(v) for v in reversed(tensor.shape)))
        with warnings.catch_warnings():  # the mapping is read-only; nothing writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.from_numpy(tensor.data)
        name = tensor.name[len(PREFIX):] if tensor.name.startswith(PREFIX) else tensor.name
        _check_size(path, tensor.name, qtype, shape, raw.numel() * raw.element_size())
        out[name] = QuantizedTensor(raw.reshape(-1).view(torch.uint8), qtype, shape)
    if unsupported:
        raise CheckpointError(f"{path.name}: tensor format(s) we do not read: {', '.join(unsupported[:6])}; "
                              f"supported: {', '.join([*PLAIN, *BLOCKS])}")
    return out


def stored_bytes(qtype: str, shape: tuple[int, ...]) -> int | None:
    """Bytes a ``shape`` tensor of format ``qtype`` occupies, or None when the shape cannot be stored in it
    (a block format needs each row, the last dimension, to be a whole number of blocks)."""
    count = math.prod(shape)
    if qtype in PLAIN:
        return count * PLAIN[qtype].itemsize
    values, size = BLOCKS[qtype]
    if not shape or shape[-1] % values:
        return None
    return count // values * size


def _check_size(path: Path, name: str, qtype: str, shape: tuple[int, ...], nbytes: int) -> None:
    """Refuse a tensor whose stored bytes are not what its declared shape and format take (a damaged or
    hand-edited file) now, with its name, instead of a reshape error later in the load or the render."""
    want = stored_bytes(qtype, shape)
    if want == nbytes:
        return
    if want is None:
        why = f"its rows of {shape[-1] if shape else 0} values are not whole {qtype} blocks of {BLOCKS[qtype][0]}"
    else:
        why = f"that shape in {qtype} takes {want} bytes but the file stores {nbytes}"
    raise CheckpointError(f"{path.name}: tensor {name} declares shape {list(shape)} and {why}; the file is damaged "
                          "or was converted wrongly: fetch or convert it again")


def inspect_gguf_dit(path: str | os.PathLike) -> DiTConfig:
    """The config of a GGUF DiT from its tensor names and shapes (nothing dequantized)."""
    return detect({k: v.shape for k, v in read_gguf(path).items()}, str(path))


def load_gguf_dit(path: str | os.PathLike, *, storage_dtype=None, compute_dtype=None, device="cpu") -> WanDiT:
    """A DiT from a GGUF file: block-format Linear weights stay quantized (on ``device``, as stored) in
    :class:`QuantizedLinear` layers; other tensors (F32 / F16 / BF16, and any quantized non-Linear tensor,
    dequantized once) are placed as the loaders place weights (``storage_dtype`` applies to those only)."""
    placement = resolve_placement("dit", storage_dtype, compute_dtype, device)
    tensors = read_gguf(path)
    config = detect({k: v.shape for k, v in tensors.items()}, str(path))
    with torch.device("meta"):
        model = WanDiT(config, linear=QuantizedLinear, compute_dtype=placement.compute_dtype)
    check_keys(path, {k: v.shape for k, v in model.state_dict().items()}, tensors, f"a {config.label} DiT")
    linears = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    plain = {}
    for name, t in tensors.items():
        module = linears.get(name)
        if module is not None and t.qtype in BLOCKS:
            module.weight = nn.Parameter(t.raw.to(placement.device), requires_grad=False)  # flat packed blocks
            module.qtype, module.weight_shape = t.qtype, t.shape
            continue
        value = dequantize(t.raw, t.qtype, t.shape, torch.float32 if t.qtype in BLOCKS else PLAIN[t.qtype])
        plain[name] = value.to(placement.storage_dtype) if placement.storage_dtype and value.is_floating_point() \
            and name in linears else value
        if module is not None:
            module.quantized = False
    model.load_state_dict(plain, strict=False, assign=True)
    model.to(placement.device)
    counts = Counter(t.qtype for t in tensors.values())
    log.info("loaded %s from %s (GGUF: %s; %s compute)", config.label, Path(path).name,
             ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())), placement.compute_dtype)
    return model.eval().requires_grad_(False)
