"""``load_clip_vision``: the CLIP ViT-H/14 image tower from ComfyUI / Hugging Face files or the official ``.pth``.

The official file is the whole XLM-RoBERTa CLIP (visual tower with fused q/k/v, plus a text tower
that Wan does not use); it is renamed to Hugging Face's CLIP vision names on load.
"""

from __future__ import annotations

import logging
import os
import re

import torch

from ..errors import CheckpointError
from ..models.clip_vision import HEAD_DIM, ClipVision, ClipVisionConfig
from ..runtime.placement import resolve_placement
from .checkpoint import check_keys, open_state_dict, place, require_kind

log = logging.getLogger(__name__)


def clip_state_from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official open-clip visual tower (``visual.*``, fused q/k/v) under Hugging Face names."""
    out = {}
    renames = ((r"^visual\.patch_embedding\.", "vision_model.embeddings.patch_embedding."),
               (r"^visual\.pre_norm\.", "vision_model.pre_layrnorm."),
               (r"^visual\.post_norm\.", "vision_model.post_layernorm."),
               (r"^visual\.transformer\.(\d+)\.norm1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
               (r"^visual\.transformer\.(\d+)\.norm2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
               (r"^visual\.transformer\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.out_proj."),
               (r"^visual\.transformer\.(\d+)\.mlp\.0\.", r"vision_model.encoder.layers.\1.mlp.fc1."),
               (r"^visual\.transformer\.(\d+)\.mlp\.2\.", r"vision_model.encoder.layers.\1.mlp.fc2."))
    for key, value in state.items():
        if not key.startswith("visual."):
            continue  # the text tower and the logit scale are not used
        if key == "visual.cls_embedding":
            out["vision_model.embeddings.class_embedding"] = value.reshape(-1)
        elif key == "visual.pos_embedding":
            out["vision_model.embeddings.position_embedding.weight"] = value.reshape(value.shape[-2:])
        elif m := re.match(r"^visual\.transformer\.(\d+)\.attn\.to_qkv\.(weight|bias)$", key):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"vision_model.encoder.layers.{m.group(1)}.self_attn.{name}.{m.group(2)}"] = part
        elif key == "visual.head":
            continue  # the final projection: Wan uses the penultimate tokens
        else:
            for pattern, replacement in renames:
                key = re.sub(pattern, replacement, key)
            out[key] = value
    return out


def detect_clip_vision(shapes, path) -> ClipVisionConfig:
    try:
        dim, _, patch, _ = shapes["vision_model.embeddings.patch_embedding.weight"]
        tokens = shapes["vision_model.embeddings.position_embedding.weight"][0]
        mlp = shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as err:
        raise CheckpointError(f"{path}: no {err.args[0]!r}; not a CLIP vision tower") from err
    layers = len({m.group(1) for k in shapes if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))})
    if dim % HEAD_DIM:
        raise CheckpointError(f"{path}: width {dim} is not a multiple of {HEAD_DIM}; not a ViT-H/14 family tower")
    side = round((tokens - 1) ** 0.5)
    return ClipVisionConfig(image_size=side * patch, patch_size=patch, dim=dim, num_heads=dim // HEAD_DIM,
                            num_layers=layers, mlp_dim=mlp)


def load_clip_vision(path: str | os.PathLike, *, storage_dtype: torch.dtype | str | None = None,
                      compute_dtype: torch.dtype | str | None = None, device="cpu") -> ClipVision:
    """Load the CLIP vision tower (ComfyUI / HF names or the official ``.pth``; the text tower is ignored).

    Heads are not visible in the tensors: the ViT-H/14 family uses heads of 80 channels (16 x 80 = 1280).
    Placement (:mod:`wan_core.runtime.placement`): its embeddings compute in the stored dtype, so
    storage and compute are one dtype, fp32 on CPU and fp16 elsewhere (the official CLIP dtype).
    """
    placement = resolve_placement("clip_vision", storage_dtype, compute_dtype, device)
    device, dtype = placement.device, placement.compute_dtype
    state = open_state_dict(path)
    require_kind(path, state.keys(), "clip_vision")
    if any(k.startswith("visual.") for k in state):
        state = clip_state_from_official(state)
    elif not any(k.startswith("vision_model.") for k in state):  # saved by transformers 5: no prefix
        state = {f"vision_model.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k.startswith("vision_model.") and not k.endswith("position_ids")}
    cfg = detect_clip_vision({k: v.shape for k, v in state.items()}, path)
    with torch.device("meta"):
        model = ClipVision(cfg, compute_dtype=dtype)
    check_keys(path, {k: v.shape for k, v in model.state_dict().items()}, state, "a CLIP vision tower")
    model.load_state_dict({k: place(v, device, dtype) for k, v in state.items()}, assign=True, strict=True)
    log.info("loaded CLIP vision (%d layers, width %d) from %s", cfg.num_layers, cfg.dim, path)
    return model.eval().requires_grad_(False)
