"""``load_dit``: a Wan2.1 DiT from any of the checkpoint layouts users have.

Layouts: official keys (``blocks.0.self_attn.q.weight``), the same under ComfyUI's
``model.diffusion_model.`` prefix, diffusers names (``blocks.0.attn1.to_q.weight``), ComfyUI
"scaled fp8" files (a ``scaled_fp8`` marker and a ``<layer>.scale_weight`` per fp8 Linear), and
``.pth`` state dicts (weights_only). The model is built on ``meta`` and takes the file's tensors
with ``assign=True``, so weights are never held twice.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from ..errors import InputError
from ..models.config import DiTConfig, detect
from ..models.dit import WanDiT
from ..models.layers import CastLinear, LinearFactory
from ..runtime.placement import DTYPES, parse_dtype, resolve_placement
from .checkpoint import (
    SCALE_SUFFIXES,
    SCALED_FP8_MARKER,
    attach_fp8_scales,
    check_keys,
    open_state_dict,
    placed_state,
    pop_fp8_scales,
    require_kind,
)

log = logging.getLogger(__name__)

PREFIXES = ("model.diffusion_model.", "diffusion_model.")

# Official -> diffusers key rewrites, applied in order to each official key.
_TO_DIFFUSERS: tuple[tuple[str, str], ...] = (
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^img_emb\.proj\.0\.", "condition_embedder.image_embedder.norm1."),
    (r"^img_emb\.proj\.1\.", "condition_embedder.image_embedder.ff.net.0.proj."),
    (r"^img_emb\.proj\.3\.", "condition_embedder.image_embedder.ff.net.2."),
    (r"^img_emb\.proj\.4\.", "condition_embedder.image_embedder.norm2."),
    (r"^img_emb\.emb_pos$", "condition_embedder.image_embedder.pos_embed"),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"\.modulation$", ".scale_shift_table"),
    (r"\.self_attn\.", ".attn1."),
    (r"\.cross_attn\.", ".attn2."),
    (r"\.norm3\.", ".norm2."),  # the affine cross-attention norm is norm3 officially, norm2 in diffusers
    (r"\.ffn\.0\.", ".ffn.net.0.proj."),
    (r"\.ffn\.2\.", ".ffn.net.2."),
    (r"\.q\.", ".to_q."), (r"\.k\.", ".to_k."), (r"\.v\.", ".to_v."), (r"\.o\.", ".to_out.0."),
    (r"\.k_img\.", ".add_k_proj."), (r"\.v_img\.", ".add_v_proj."), (r"\.norm_k_img\.", ".norm_added_k."),
    (r"\.before_proj\.", ".proj_in."), (r"\.after_proj\.", ".proj_out."),  # VACE blocks
)


def dit_key_to_diffusers(key: str) -> str:
    """The diffusers ``WanTransformer3DModel`` name of an official DiT key."""
    for pattern, replacement in _TO_DIFFUSERS:
        key = re.sub(pattern, replacement, key)
    return key


def _official_keys(num_layers: int) -> list[str]:
    """Every official key a DiT with ``num_layers`` blocks can have (all variants' keys together)."""
    layers = max(num_layers, 1)
    with torch.device("meta"):
        superset = WanDiT(DiTConfig("flf2v", dim=128, ffn_dim=128, num_layers=layers, in_dim=36))
        vace = WanDiT(DiTConfig("vace", dim=128, ffn_dim=128, num_layers=layers, vace_layers=tuple(range(layers))))
    return list(dict.fromkeys([*superset.state_dict(), *vace.state_dict()]))


def diffusers_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout DiT state dict to official keys; unknown keys are kept as they are."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    table = {dit_key_to_diffusers(k): k for k in _official_keys(max(blocks, default=-1) + 1)}
    out = {}
    for key, value in state.items():
        stem, suffix = _split_scale(key)
        base = table.get(stem + ".weight" if suffix else stem)
        out[(base[: -len(".weight")] + suffix) if (base and suffix) else (base or key)] = value
    return out


def _split_scale(key: str) -> tuple[str, str]:
    for suffix in SCALE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def to_official_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ComfyUI's prefix and convert diffusers names, so keys match :class:`WanDiT`'s."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    if "scale_shift_table" in state or any(".attn1.to_q." in k for k in state):
        state = diffusers_to_official(state)
    return state


def inspect_dit(path: str | os.PathLike) -> DiTConfig:
    """The config of the DiT in ``path`` from its names and shapes alone (no weight is read or built).

    Raises :class:`CheckpointError` for a file of another kind, a damaged header or missing blocks.
    """
    if str(path).lower().endswith(".gguf"):
        from .gguf import inspect_gguf_dit

        return inspect_gguf_dit(path)
    state = open_state_dict(path)
    require_kind(path, state.keys(), "dit")
    state = to_official_layout(state)
    shapes = {k: v.shape for k, v in state.items() if not k.endswith(SCALE_SUFFIXES) and k != SCALED_FP8_MARKER}
    return detect(shapes, str(path))


def load_dit(path: str | os.PathLike, *, storage_dtype: torch.dtype | str | None = None,
             compute_dtype: torch.dtype | str | None = None, device="cpu",
             linear: LinearFactory = CastLinear, fp8_matmul: bool = False) -> WanDiT:
    """Load a Wan2.1 DiT (t2v / i2v / flf2v, detected from the tensors) from ``path`` (safetensors, .pth, or
    a city96-layout .gguf: see :mod:`wan_core.loading.gguf`).

    storage_dtype / compute_dtype / device: the placement policy (:mod:`wan_core.runtime.placement`):
    weights kept as the file has them unless told (fp8 applies to Linear weights only), compute
    fp32 on CPU and bf16 elsewhere, weights placed on ``device``.
    fp8_matmul: the blocks' Linear layers multiply in fp8 on GPUs with fp8 tensor cores (ComfyUI's
    ``fp8_e4m3fn_fast``): their weights are stored in fp8 (the file's fp8 or scaled fp8, else converted), the
    activations stay in ``compute_dtype``. Raises :class:`InputError` for a GGUF file or another storage dtype.
    Raises :class:`CheckpointError` before building anything if the file is truncated, of another
    kind, or does not match the detected architecture (listing the missing/unexpected keys).
    """
    gguf = str(path).lower().endswith(".gguf")
    if fp8_matmul:
        storage_dtype = fp8_storage(path, storage_dtype)
    if gguf:  # quantized blocks: their own loader and Linear layers
        from .gguf import load_gguf_dit

        model = load_gguf_dit(path, storage_dtype=storage_dtype, compute_dtype=compute_dtype, device=device)
        model.source = dit_source(path, storage_dtype, model.compute_dtype, False)
        return model
    placement = resolve_placement("dit", storage_dtype, compute_dtype, device)
    state = open_state_dict(path)
    require_kind(path, state.keys(), "dit")
    state = to_official_layout(state)
    scales = pop_fp8_scales(state)
    config = detect({k: v.shape for k, v in state.items()}, str(path))
    device = placement.device
    with torch.device("meta"):
        model = WanDiT(config, linear=linear, compute_dtype=placement.compute_dtype)
    check_keys(path, {k: v.shape for k, v in model.state_dict().items()}, state, f"a {config.label} DiT")
    model.load_state_dict(placed_state(state, scales, device, placement.storage_dtype), assign=True, strict=True)
    attach_fp8_scales(model, scales, device, path)
    model.to(device)  # the non-persistent rotary tables
    model.fp8_matmul = fp8_matmul
    if linear is CastLinear:  # what another process needs to load this very model (a parallel render's workers)
        model.source = dit_source(path, storage_dtype, placement.compute_dtype, fp8_matmul)
    log.info("loaded %s from %s (%s weights, %s compute%s)", config.label, path,
             placement.storage_dtype or next(iter(state.values())).dtype, placement.compute_dtype,
             ", fp8 matrix products where the GPU has them" if fp8_matmul else "")
    return model.eval().requires_grad_(False)


def dit_source(path, storage_dtype, compute_dtype: torch.dtype, fp8_matmul: bool) -> dict:
    """How a DiT was loaded, as plain values: ``load_dit(**source)`` loads it again (in another process)."""
    storage = parse_dtype(storage_dtype)
    names = {dtype: name for name, dtype in DTYPES.items() if dtype is not None}
    return {"path": str(Path(path).resolve()), "storage_dtype": None if storage is None else names[storage],
            "compute_dtype": names[compute_dtype], "fp8_matmul": bool(fp8_matmul)}


def fp8_storage(path, storage_dtype: torch.dtype | str | None) -> torch.dtype:
    """The storage dtype of a DiT loaded for fp8 matrix products: fp8_e4m3fn (an fp8 or scaled-fp8 file keeps its
    weights and scales). Raises :class:`InputError` for a GGUF file or another storage dtype asked for."""
    if str(path).lower().endswith(".gguf"):
        raise InputError(f"{path}: a GGUF file's weights are block-quantized, not fp8, so they cannot multiply in "
                         "fp8; choose compute dtype default (GGUF layers dequantize where they compute) or load an "
                         "fp8 / scaled-fp8 safetensors file")
    storage = parse_dtype(storage_dtype)
    if storage not in (None, torch.float8_e4m3fn):
        raise InputError(f"fp8 matrix products need fp8 weights, but weight dtype {storage} was chosen; choose "
                         "weight dtype default or fp8_e4m3fn, or a compute dtype other than fp8")
    return torch.float8_e4m3fn
