"""Opening checkpoint files, telling their kind apart, and strict key/shape checks.

Shared by every loader (DiT, VAE, text encoder, CLIP vision): weights come only from safetensors
(memory-mapped) or from ``torch.load(..., weights_only=True)``; nothing is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.layers import CastLinear
from .safetensors_io import load_mmap
from .shards import INDEX_SUFFIX, SHARD, open_shards

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")

KIND_DESCRIPTIONS = {
    "dit": ("a Wan2.1 diffusion model (DiT)", "load_dit / WanCoreModelLoader (models/diffusion_models)"),
    "vae": ("a Wan VAE", "load_vae / WanCoreVAELoader (models/vae)"),
    "text_encoder": ("a UMT5 text encoder", "load_text_encoder / WanCoreTextEncoderLoader (models/text_encoders)"),
    "clip_vision": ("a CLIP vision encoder", "load_clip_vision / WanCoreCLIPVisionLoader (models/clip_vision)"),
    "lora": ("a LoRA", "a LoRA loader (models/loras)"),
}

# Key fragments that identify each kind of file, checked in this order (first match wins).
_KIND_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lora", ("lora_down", "lora_A", "lora_up", "lora_B")),
    ("dit", ("self_attn.q.weight", "attn1.to_q.weight", "head.modulation", "scale_shift_table")),
    ("clip_vision", ("vision_model.", "visual.", "class_embedding")),  # before text: CLIP .pth has a text tower
    ("text_encoder", ("SelfAttention.q.weight", "shared.weight", "token_embedding.weight", "attn.q.weight")),
    ("vae", ("decoder.", "encoder.", "conv1.weight", "post_quant_conv")),
)


def open_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint on CPU, without a second copy in memory.

    ``.safetensors`` is memory-mapped; ``.pth/.pt/.ckpt/.bin`` go through
    ``torch.load(weights_only=True)`` (memory-mapped where the file format allows). A sharded checkpoint
    (``-0000N-of-0000M.safetensors``, see :mod:`.shards`) is given by any shard, its index or its folder.
    """
    path = Path(path)
    if path.is_dir() or path.name.endswith(INDEX_SUFFIX) or (path.is_file() and SHARD.match(path.name)):
        return open_shards(path, load_mmap)  # shards merged; a folder holding one plain file: that file
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist; check the name and the models folder")
    if path.suffix.lower() == ".safetensors":
        return load_mmap(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle_weights(path)
    raise CheckpointError(f"{path}: unsupported file type {path.suffix!r}; use .safetensors (or .pth)")


def _load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path} could not be read as plain weights ({err}). It may be truncated, or "
                              "contain code objects, which are never unpickled; convert it to .safetensors") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors (a state dict)")
    return obj


def identify(keys) -> str | None:
    """The kind of checkpoint ("dit", "vae", "text_encoder", "clip_vision", "lora") from its keys."""
    keys = list(keys)
    for kind, markers in _KIND_MARKERS:
        if any(marker in key for key in keys for marker in markers):
            return kind
    return None


def require_kind(path, keys, expected: str) -> None:
    """Raise a :class:`CheckpointError` naming the file's real kind and its loader unless it is ``expected``."""
    kind = identify(keys)
    if kind == expected:
        return
    want, _ = KIND_DESCRIPTIONS[expected]
    if kind is None:
        raise CheckpointError(f"{path} does not look like {want}: none of its {len(list(keys))} keys match")
    got, loader = KIND_DESCRIPTIONS[kind]
    raise CheckpointError(f"{path} is {got}, not {want}; load it with {loader}")


def inspect_kind(path: str | os.PathLike, expected: str) -> None:
    """Check that ``path`` is a readable checkpoint of the ``expected`` kind without reading any weight."""
    require_kind(path, open_state_dict(path).keys(), expected)


def check_keys(path, expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise one :class:`CheckpointError` listing missing, unexpected and mis-shaped keys, if any."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k])}"
                        for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{path} does not match {what}:"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            parts.append(f"  {len(items)} {label}: {shown}")
    parts.append("The file is incomplete or from a different model; use an unmodified Wan2.1 file.")
    raise CheckpointError("\n".join(parts))


def place(tensor: torch.Tensor, device, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` on ``device`` in ``dtype`` (floating tensors only), copying only when needed."""
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


SCALE_SUFFIXES = (".scale_weight", ".scale_input")
SCALED_FP8_MARKER = "scaled_fp8"


def pop_fp8_scales(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ComfyUI's scaled-fp8 marker and per-layer scales; return ``{layer name: scale_weight}``."""
    state.pop(SCALED_FP8_MARKER, None)
    scales = {}
    for key in [k for k in state if k.endswith(SCALE_SUFFIXES)]:
        value = state.pop(key)
        if key.endswith(".scale_weight"):
            scales[key[: -len(".scale_weight")]] = value
    return scales


def placed_state(state: dict[str, torch.Tensor], scales: dict[str, torch.Tensor], device,
                 dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Tensors on ``device`` in the requested storage dtype (None keeps the file's).

    An fp8 dtype applies to Linear weights (2-D ``.weight``) only. A non-fp8 dtype dequantizes
    scaled-fp8 weights (``w * scale``), and their scales are removed from ``scales``.
    """
    fp8 = dtype is not None and dtype.itemsize == 1
    out = {}
    for key, value in state.items():
        stem = key[: -len(".weight")] if key.endswith(".weight") else None
        if stem in scales and dtype is not None and not fp8:
            value = value.to(torch.float32) * scales.pop(stem).float().reshape(-1, *([1] * (value.dim() - 1)))
        want = dtype if not fp8 or (stem is not None and value.dim() == 2) else None
        out[key] = place(value, device, want)
    return out


def attach_fp8_scales(model: torch.nn.Module, scales: dict[str, torch.Tensor], device, path) -> None:
    """Give each scaled Linear its ``scale_weight`` (applied when the weight is cast for compute)."""
    for name, scale in scales.items():
        module = model.get_submodule(name) if name else None
        if not isinstance(module, CastLinear):
            raise CheckpointError(f"{path}: scale for {name!r}, which is not a scaled Linear of this model")
        module.scale_weight = scale.to(device=device, dtype=torch.float32)
