"""Random LoRAs for the tiny DiTs, written in the key layouts LoRA files use (see wan_core.loading.lora)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from wan_core.loading.lora import ModuleNames, lora_key

BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
IMAGE_LINEARS = ("cross_attn.k_img", "cross_attn.v_img")


def block_modules(cfg, image: bool = False) -> list[str]:
    per_block = BLOCK_LINEARS + (IMAGE_LINEARS if image else ())
    return [f"blocks.{i}.{m}" for i in range(cfg.num_layers) for m in per_block]


def random_lora(cfg, modules, fmt: str = "official", rank: int = 4, seed: int = 0, alpha: float | None = 8.0,
                diff_b: tuple[str, ...] = (), scale: float = 0.2) -> dict[str, torch.Tensor]:
    """A LoRA state dict: a rank-``rank`` pair (and ``alpha``) for each module, a bias delta for ``diff_b``."""
    names = ModuleNames(cfg.num_layers)
    shapes = {}
    from wan_core.models.dit import WanDiT

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for module in modules:
        out_dim, in_dim = shapes[module + ".weight"]
        state[lora_key(module, "down", fmt, names)] = scale * torch.randn(rank, in_dim, generator=gen)
        state[lora_key(module, "up", fmt, names)] = scale * torch.randn(out_dim, rank, generator=gen)
        if alpha is not None:
            state[lora_key(module, "alpha", fmt, names)] = torch.tensor(alpha)
    for module in diff_b:
        state[lora_key(module, "diff_b", fmt, names)] = scale * torch.randn(shapes[module + ".bias"], generator=gen)
    return state


def write_lora(path, state) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return str(path)
