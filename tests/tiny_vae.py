"""A tiny Wan2.1 VAE (base width 8, the real structure) with random weights in the official layout."""

from __future__ import annotations

import torch
from wan_reference import wan_module

from wan_core.models.vae import VAEConfig

TINY = VAEConfig(base_dim=8)


def reference_vae(seed: int = 0, cfg: VAEConfig = TINY):
    """wan22's ``WanVAE_`` with every parameter randomized (it zero-initializes some)."""
    vae_mod = wan_module("modules.vae2_1")
    model = vae_mod.WanVAE_(dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                            num_res_blocks=cfg.num_res_blocks, attn_scales=[],
                            temperal_downsample=list(cfg.temporal_downsample), dropout=0.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:  # variance-preserving for a conv: 1 / sqrt(fan_in)
                p.copy_(noise / (p[0].numel() ** 0.5))
    return model.eval()


def video(frames: int, height: int = 32, width: int = 48, seed: int = 1) -> torch.Tensor:
    """A smooth random clip ``[1, 3, frames, H, W]`` in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, frames, height // 8, width // 8, generator=gen) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(frames, height, width), mode="trilinear")


def local_reference_vae(seed: int = 0):
    """A random VAE whose decoding is local, as a trained one's is: the middle attention's output
    projection is zero (the official initialization) and residual branches are damped, so a
    pixel depends mostly on nearby latents. Tiling error is only meaningful for such a model."""
    model = reference_vae(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".proj." in name:
                p.zero_()
            elif ".residual.6." in name:
                p.mul_(0.3)
    return model
