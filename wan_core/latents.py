"""Raw <-> normalized VAE latents with the per-channel statistics of the VAE that made them (Wan2.1: 16 channels,
Wan2.2: 48; DESIGN §4), and a quick RGB preview."""

from __future__ import annotations

import torch

from .constants import (
    LATENT_CHANNELS,
    LATENT_MEAN,
    LATENT_STD,
    VAE_STRIDE,
    WAN22_LATENT_CHANNELS,
    WAN22_LATENT_MEAN,
    WAN22_LATENT_STD,
)
from .errors import InputError

STATISTICS = {LATENT_CHANNELS: (LATENT_MEAN, LATENT_STD), WAN22_LATENT_CHANNELS: (WAN22_LATENT_MEAN, WAN22_LATENT_STD)}
"""The per-channel statistics of each VAE's latents, by channel count: Wan2.1 (16), Wan2.2 (48)."""


def _stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if z.dim() != 5 or z.shape[1] not in STATISTICS:
        raise InputError(f"latents must be [B, {LATENT_CHANNELS}, F', H/8, W/8] (Wan2.1) or [B, "
                         f"{WAN22_LATENT_CHANNELS}, F', H/16, W/16] (Wan2.2), got shape {tuple(z.shape)}")
    channels = z.shape[1]
    mean, std = STATISTICS[channels]
    shape = (1, channels, 1, 1, 1)
    return (torch.tensor(mean, dtype=z.dtype, device=z.device).view(shape),
            torch.tensor(std, dtype=z.dtype, device=z.device).view(shape))


def normalize_latents(raw: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents ``[B, 16, F', h, w]`` -> the DiT's normalized space: ``(raw - mean) / std``."""
    mean, std = _stats(raw)
    return (raw - mean) / std


def denormalize_latents(z: torch.Tensor) -> torch.Tensor:
    """Normalized latents ``[B, 16, F', h, w]`` -> raw VAE latents: ``z * std + mean``."""
    mean, std = _stats(z)
    return z * std + mean


# Wan2.1 latent -> RGB linear map (per-channel weights and bias) for quick previews of
# normalized latents: a widely used approximation (ComfyUI's Wan21 latent format publishes it).
PREVIEW_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
PREVIEW_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


def latent_preview(x0: torch.Tensor) -> torch.Tensor:
    """Normalized latents ``[B, 16, F', h, w]`` -> uint8 RGB ``[h, w, 3]`` of the last latent frame of item 0."""
    factors = torch.tensor(PREVIEW_RGB_FACTORS, dtype=torch.float32, device=x0.device)
    bias = torch.tensor(PREVIEW_RGB_BIAS, dtype=torch.float32, device=x0.device)
    rgb = x0[0, :, -1].float().permute(1, 2, 0) @ factors + bias  # [h, w, 3] in about [-1, 1]
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def preview_side(preview: torch.Tensor, limit: int) -> int:
    """The longest side a front end may scale a :func:`latent_preview` (``[h, w, 3]``, one pixel per latent cell)
    to: the render's own (8 pixels per cell), at most ``limit``; so a small render's preview is not enlarged past
    the render (and labelled with a size it does not have)."""
    return min(int(limit), VAE_STRIDE[1] * max(preview.shape[0], preview.shape[1]))
