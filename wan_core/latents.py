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

# The same for the Wan2.2 VAE's 48 channels (ComfyUI's Wan22 latent format publishes it).
WAN22_PREVIEW_RGB_FACTORS = (
    (0.0119, 0.0103, 0.0046), (-0.1062, -0.0504, 0.0165), (0.0140, 0.0409, 0.0491), (-0.0813, -0.0677, 0.0607),
    (0.0656, 0.0851, 0.0808), (0.0264, 0.0463, 0.0912), (0.0295, 0.0326, 0.0590), (-0.0244, -0.0270, 0.0025),
    (0.0443, -0.0102, 0.0288), (-0.0465, -0.0090, -0.0205), (0.0359, 0.0236, 0.0082), (-0.0776, 0.0854, 0.1048),
    (0.0564, 0.0264, 0.0561), (0.0006, 0.0594, 0.0418), (-0.0319, -0.0542, -0.0637), (-0.0268, 0.0024, 0.0260),
    (0.0539, 0.0265, 0.0358), (-0.0359, -0.0312, -0.0287), (-0.0285, -0.1032, -0.1237), (0.1041, 0.0537, 0.0622),
    (-0.0086, -0.0374, -0.0051), (0.0390, 0.0670, 0.2863), (0.0069, 0.0144, 0.0082), (0.0006, -0.0167, 0.0079),
    (0.0313, -0.0574, -0.0232), (-0.1454, -0.0902, -0.0481), (0.0714, 0.0827, 0.0447), (-0.0304, -0.0574, -0.0196),
    (0.0401, 0.0384, 0.0204), (-0.0758, -0.0297, -0.0014), (0.0568, 0.1307, 0.1372), (-0.0055, -0.0310, -0.0380),
    (0.0239, -0.0305, 0.0325), (-0.0663, -0.0673, -0.0140), (-0.0416, -0.0047, -0.0023), (0.0166, 0.0112, -0.0093),
    (-0.0211, 0.0011, 0.0331), (0.1833, 0.1466, 0.2250), (-0.0368, 0.0370, 0.0295), (-0.3441, -0.3543, -0.2008),
    (-0.0479, -0.0489, -0.0420), (-0.0660, -0.0153, 0.0800), (-0.0101, 0.0068, 0.0156), (-0.0690, -0.0452, -0.0927),
    (-0.0145, 0.0041, 0.0015), (0.0421, 0.0451, 0.0373), (0.0504, -0.0483, -0.0356), (-0.0837, 0.0168, 0.0055),
)
WAN22_PREVIEW_RGB_BIAS = (0.0317, -0.0878, -0.1388)
_PREVIEWS = {LATENT_CHANNELS: (PREVIEW_RGB_FACTORS, PREVIEW_RGB_BIAS),
             WAN22_LATENT_CHANNELS: (WAN22_PREVIEW_RGB_FACTORS, WAN22_PREVIEW_RGB_BIAS)}


def latent_preview(x0: torch.Tensor) -> torch.Tensor:
    """Normalized latents ``[B, 16 or 48, F', h, w]`` -> uint8 RGB ``[h, w, 3]`` of the last latent frame of item 0."""
    table, offset = _PREVIEWS[x0.shape[1]]
    factors = torch.tensor(table, dtype=torch.float32, device=x0.device)
    bias = torch.tensor(offset, dtype=torch.float32, device=x0.device)
    rgb = x0[0, :, -1].float().permute(1, 2, 0) @ factors + bias  # [h, w, 3] in about [-1, 1]
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def preview_side(preview: torch.Tensor, limit: int) -> int:
    """The longest side a front end may scale a :func:`latent_preview` (``[h, w, 3]``, one pixel per latent cell)
    to: the render's own (8 pixels per cell), at most ``limit``; so a small render's preview is not enlarged past
    the render (and labelled with a size it does not have)."""
    return min(int(limit), VAE_STRIDE[1] * max(preview.shape[0], preview.shape[1]))
