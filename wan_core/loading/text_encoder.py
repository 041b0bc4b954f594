"""``load_text_encoder``: UMT5-XXL from ComfyUI / Hugging Face files or the official ``.pth``."""

from __future__ import annotations

import logging
import os
import re

import torch

from ..errors import CheckpointError
from ..models.text_encoder import TextEncoder, TextEncoderConfig, UMT5Encoder
from ..runtime.placement import resolve_placement
from .checkpoint import attach_fp8_scales, check_keys, open_state_dict, placed_state, pop_fp8_scales, require_kind
from .tokenizer import EMBEDDED_KEY, find_tokenizer

log = logging.getLogger(__name__)

# Official (wan/modules/t5.py) -> Hugging Face names.
_FROM_OFFICIAL = (
    (r"^token_embedding\.", "shared."),
    (r"^norm\.", "encoder.final_layer_norm."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.", r"encoder.block.\1.layer.0.SelfAttention."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
)
_TIED = "encoder.embed_tokens.weight"  # Hugging Face files may repeat the shared embedding here


def umt5_key_from_official(key: str) -> str:
    """The Hugging Face / ComfyUI name of an official UMT5 encoder key."""
    for pattern, replacement in _FROM_OFFICIAL:
        key = re.sub(pattern, replacement, key)
    return key


def detect_text_encoder(shapes, path) -> TextEncoderConfig:
    def shape(key):
        if key not in shapes:
            raise CheckpointError(f"{path}: no tensor {key!r}; not a complete UMT5 encoder")
        return tuple(shapes[key])

    vocab, dim = shape("shared.weight")
    layers = len({m.group(1) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    attn = "encoder.block.0.layer.0.SelfAttention."
    return TextEncoderConfig(vocab=vocab, dim=dim, dim_attn=shape(attn + "q.weight")[0],
                             dim_ffn=shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0],
                             num_heads=shape(attn + "relative_attention_bias.weight")[1],
                             num_buckets=shape(attn + "relative_attention_bias.weight")[0], num_layers=layers)


def load_text_encoder(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None, *,
                      storage_dtype: torch.dtype | str | None = None, compute_dtype: torch.dtype | str | None = None,
                      device="cpu") -> TextEncoder:
    """Load UMT5-XXL (any size of the same family) and its tokenizer.

    storage_dtype / compute_dtype / device: the placement policy (:mod:`wan_core.runtime.placement`):
    weights kept as the file has them unless told (bf16 / fp16 / fp8, cast for compute one layer at
    a time), compute fp32 on CPU and bf16 elsewhere. The tokenizer is found before anything heavy
    happens; :class:`CheckpointError` names every place looked at.
    """
    placement = resolve_placement("text_encoder", storage_dtype, compute_dtype, device)
    state = open_state_dict(path)
    require_kind(path, state.keys(), "text_encoder")
    tok = find_tokenizer(path, state, tokenizer)
    state.pop(EMBEDDED_KEY, None)
    if "token_embedding.weight" in state:
        state = {umt5_key_from_official(k): v for k, v in state.items()}
    tied = state.pop(_TIED, None)
    if "shared.weight" not in state and tied is not None:
        state["shared.weight"] = tied
    scales = pop_fp8_scales(state)
    cfg = detect_text_encoder({k: v.shape for k, v in state.items()}, path)
    with torch.device("meta"):
        model = UMT5Encoder(cfg, compute_dtype=placement.compute_dtype)
    check_keys(path, {k: v.shape for k, v in model.state_dict().items()}, state, "a UMT5 encoder")
    model.load_state_dict(placed_state(state, scales, placement.device, placement.storage_dtype), assign=True,
                          strict=True)
    attach_fp8_scales(model, scales, placement.device, path)
    log.info("loaded UMT5 encoder (%d layers, width %d) from %s; tokenizer from %s", cfg.num_layers, cfg.dim,
             path, tok.source)
    return TextEncoder(model.eval().requires_grad_(False), tok)
