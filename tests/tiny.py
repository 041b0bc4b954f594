"""Tiny Wan2.1 DiT configs and random weights for CPU tests.

Tiny configs respect the real rules (heads = dim // 128, so dim 256 has 2 heads). Weights are
random and written in the real key layouts, so every loader runs exactly as on real files.
"""

from __future__ import annotations

import torch

from wan_core.models.config import DiTConfig
from wan_core.models.dit import WanDiT

TEXT_DIM = 64  # the real encoder is 4096 wide; the DiT reads this width from its weights
T2V = DiTConfig("t2v", dim=256, ffn_dim=384, num_layers=2, text_dim=TEXT_DIM)
I2V = DiTConfig("i2v", dim=256, ffn_dim=384, num_layers=2, text_dim=TEXT_DIM, in_dim=36, clip_dim=64)
FLF2V = DiTConfig("flf2v", dim=256, ffn_dim=384, num_layers=2, text_dim=TEXT_DIM, in_dim=36, clip_dim=64)


def randomize_(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Fill every tensor with seeded random values: norm weights near 1, everything else N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in sorted(state):
            t = state[key]
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            is_norm_weight = "norm" in key.split(".")[-2] if key.count(".") else False
            value = 1 + 0.1 * noise if (is_norm_weight and key.endswith("weight")) else 0.1 * noise
            t.copy_(value.to(t.dtype))
    return state


def random_official_state(cfg: DiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the official key names and shapes of ``cfg``."""
    state = {k: torch.empty(v.shape) for k, v in _meta_state(cfg).items()}
    return randomize_(state, seed)


def _meta_state(cfg: DiTConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return WanDiT(cfg).state_dict()


def inputs(cfg: DiTConfig, batch: int = 1, frames: int = 3, h: int = 8, w: int = 10, text: int = 7, seed: int = 1):
    """Random (x, t, context, clip_fea, y) for ``cfg``; clip_fea / y are None for t2v."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, h, w, generator=gen)
    t = torch.tensor([700.0, 250.0][:batch] + [500.0] * max(0, batch - 2))
    context = torch.randn(batch, text, cfg.text_dim, generator=gen)
    clip_fea = y = None
    if cfg.has_image_branch:
        clip_fea = torch.randn(batch, cfg.clip_tokens, cfg.clip_dim, generator=gen)
        y = torch.randn(batch, cfg.in_dim - 16, frames, h, w, generator=gen)
    return x, t, context, clip_fea, y


def truncate(path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its size, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def dit_like_file(path) -> None:
    """A small safetensors file whose keys say "Wan DiT" (for wrong-loader errors)."""
    from safetensors.torch import save_file

    save_file({"blocks.0.self_attn.q.weight": torch.zeros(2, 2), "head.modulation": torch.zeros(1, 2, 2)}, path)


class CountingRunner:
    """A block runner that runs every block where it is and counts them (``blocks_run``): proof that work
    happened, or that it did not."""

    def __init__(self):
        self.blocks_run = 0

    def __call__(self, blocks, h, *args):
        for block in blocks:
            self.blocks_run += 1
            h = block(h, *args)
        return h
