"""Raw <-> normalized VAE latents with the Wan2.1 per-channel statistics (DESIGN §4)."""

from __future__ import annotations

import torch

from .constants import LATENT_CHANNELS, LATENT_MEAN, LATENT_STD
from .errors import InputError


def _stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if z.dim() != 5 or z.shape[1] != LATENT_CHANNELS:
        raise InputError(f"latents must be [B, {LATENT_CHANNELS}, F', H/8, W/8], got shape {tuple(z.shape)}")
    shape = (1, LATENT_CHANNELS, 1, 1, 1)
    mean = torch.tensor(LATENT_MEAN, dtype=z.dtype, device=z.device).view(shape)
    std = torch.tensor(LATENT_STD, dtype=z.dtype, device=z.device).view(shape)
    return mean, std


def normalize_latents(raw: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents ``[B, 16, F', h, w]`` -> the DiT's normalized space: ``(raw - mean) / std``."""
    mean, std = _stats(raw)
    return (raw - mean) / std


def denormalize_latents(z: torch.Tensor) -> torch.Tensor:
    """Normalized latents ``[B, 16, F', h, w]`` -> raw VAE latents: ``z * std + mean``."""
    mean, std = _stats(z)
    return z * std + mean
