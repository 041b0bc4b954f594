"""The open-clip ViT-H/14 image tower Wan2.1 I2V / FLF2V condition on (loaded by ``loading.clip_vision``).

224x224 input in 14-pixel patches (256 + 1 class token = 257 tokens of 1280); the output is the
hidden state after the penultimate block (block 31 of 32), as the official pipeline uses it.
Attributes mirror Hugging Face's CLIP vision names (ComfyUI's ``clip_vision_h.safetensors``); the
official ``.pth`` (visual tower of the XLM-RoBERTa CLIP, fused q/k/v) is converted on load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..runtime.finite import check_finite, check_output
from .layers import CastLinear

HEAD_DIM = 80
"""Channels per attention head in the ViT-H/14 family (not stored in checkpoints)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipVisionConfig:
    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    num_heads: int = 16
    num_layers: int = 32
    mlp_dim: int = 5120
    eps: float = 1e-5

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


VIT_H_14 = ClipVisionConfig()


def preprocess(images: torch.Tensor, size: int = VIT_H_14.image_size) -> torch.Tensor:
    """IMAGE ``[N, H, W, 3]`` 0..1 -> ``[N, 3, size, size]``: bicubic resize of the whole frame (no crop,
    as the official pipeline does), then CLIP mean / std."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise InputError(f"image must be [N, height, width, 3] RGB, got shape {tuple(images.shape)}")
    x = F.interpolate(images.float().movedim(-1, 1), size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class Embeddings(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.dim))
        self.position_embedding = nn.Embedding(cfg.tokens, cfg.dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(patches.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (CastLinear(cfg.dim, cfg.dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  [B, heads, L, d]
        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.fc1 = CastLinear(cfg.dim, cfg.mlp_dim)
        self.fc2 = CastLinear(cfg.mlp_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.self_attn = Attention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(_norm(self.layer_norm1, x))
        return x + self.mlp(_norm(self.layer_norm2, x))


def _norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)


class Encoder(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.dim, eps=cfg.eps)  # (sic: Hugging Face's key name)
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.dim, eps=cfg.eps)


class ClipVision(nn.Module):
    """``encode(IMAGE [N, H, W, 3] in 0..1) -> [N, 257, 1280]`` penultimate-block tokens (float32)."""

    def __init__(self, config: ClipVisionConfig = VIT_H_14, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.vision_model = VisionTransformer(config)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE ``[N, H, W, 3]`` 0..1 -> ``[N, 3, S, S]`` normalized pixels (see :func:`preprocess`)."""
        return preprocess(images, self.config.image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalized ``[N, 3, 224, 224]`` -> the hidden state after the penultimate block ``[N, 257, dim]``."""
        vm = self.vision_model
        x = _norm(vm.pre_layrnorm, vm.embeddings(pixels.to(self.compute_dtype)))
        for layer in vm.encoder.layers[:-1]:
            x = layer(x)
        return x.float()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        check_finite("the image", images, "an image node before this one produced invalid values")
        device = self.vision_model.embeddings.position_embedding.weight.device
        return check_output("CLIP vision encoder", self(self.preprocess(images.to(device))), self)
