"""``load_text_encoder``: UMT5-XXL from ComfyUI / Hugging Face files or the official ``.pth``."""

from __future__ import annotations

import logging
import os
import re

import torch

from .checkpoint import attach_fp8_scales, check_keys, open_state_dict, placed_state, pop_fp8_scales, require_kind
from .errors import CheckpointError, InputError
from .text_encoder import TextEncoderConfig, UMT5Encoder
from .tokenizer import EMBEDDED_KEY, Tokenizer, find_tokenizer

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


def official_to_hf(key: str) -> str:
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


class TextEncoder:
    """Prompts -> the DiT's text context: ``encode(list[str]) -> [B, 512, dim]`` float32.

    Rows after each prompt's last token (its end token) are zero, exactly as the official
    pipeline hands states to the DiT.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def to(self, device) -> TextEncoder:
        """Move the weights (e.g. off the GPU once prompts are encoded); returns self."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise InputError(f"encode takes a non-empty list of prompt strings, got {texts!r}")
        ids, mask = self.tokenizer(texts)
        # Positions after the longest prompt are padding: their keys are masked out and their outputs
        # zeroed, and the position bias depends only on distances, so they need no compute at all.
        used = int(mask.sum(1).max())
        states = self.model(ids[:, :used].to(self.device), mask[:, :used].to(self.device)).float()
        out = torch.zeros(len(texts), ids.shape[1], states.shape[-1], device=states.device)
        out[:, :used] = states * mask[:, :used].to(states.device)[..., None]
        return out


def load_text_encoder(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                      dtype: torch.dtype | None = None, device="cpu",
                      compute_dtype: torch.dtype | None = None) -> TextEncoder:
    """Load UMT5-XXL (any size of the same family) and its tokenizer.

    dtype: storage dtype (None keeps the file's bf16 / fp16 / fp8; weights are cast for compute
    one layer at a time). compute_dtype: default fp32 on CPU, bf16 elsewhere. The tokenizer is
    found before anything heavy happens; :class:`CheckpointError` names every place looked at.
    """
    state = open_state_dict(path)
    require_kind(path, state.keys(), "text_encoder")
    tok = find_tokenizer(path, state, tokenizer)
    state.pop(EMBEDDED_KEY, None)
    if "token_embedding.weight" in state:
        state = {official_to_hf(k): v for k, v in state.items()}
    tied = state.pop(_TIED, None)
    if "shared.weight" not in state and tied is not None:
        state["shared.weight"] = tied
    scales = pop_fp8_scales(state)
    cfg = detect_text_encoder({k: v.shape for k, v in state.items()}, path)
    device = torch.device(device)
    compute_dtype = compute_dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    with torch.device("meta"):
        model = UMT5Encoder(cfg, compute_dtype=compute_dtype)
    check_keys(path, {k: v.shape for k, v in model.state_dict().items()}, state, "a UMT5 encoder")
    model.load_state_dict(placed_state(state, scales, device, dtype), assign=True, strict=True)
    attach_fp8_scales(model, scales, device, path)
    log.info("loaded UMT5 encoder (%d layers, width %d) from %s; tokenizer from %s", cfg.num_layers, cfg.dim,
             path, tok.source)
    return TextEncoder(model.eval().requires_grad_(False), tok)
