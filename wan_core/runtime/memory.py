"""How much memory a render needs and has: a DiT activation estimate checked before anything is allocated.

The estimate counts what is alive at the peak of one DiT block for the whole CFG batch: the fp32
residual stream and its norm / modulation temporaries, the q / k / v / attention outputs and their
fp32 rotary copies, and the feed-forward's hidden layer. Attention itself runs in memory-efficient
kernels (no ``L x L`` score matrix). Weights are not counted: they are already where they are.
"""

from __future__ import annotations

import os

import torch

from ..errors import InputError

RESIDUAL_COPIES = 8
"""fp32 ``[B, L, C]`` tensors alive at a block's peak: stream, normed, modulated, gated sums, rotary q / k."""

PROJECTION_COPIES = 6
"""Compute-dtype ``[B, L, C]`` tensors: q, k, v, the attention output, its projection, the cross-attention query."""

FFN_COPIES = 2
"""Compute-dtype ``[B, L, ffn]`` tensors: the first Linear's output and its GELU."""


def dit_activation_bytes(dim: int, ffn_dim: int, tokens: int, batch: int, dtype: torch.dtype,
                         ffn_chunks: int = 1) -> int:
    """Peak activation bytes of one DiT forward over ``batch`` sequences of ``tokens`` tokens (the
    feed-forward's hidden layer over ``tokens / ffn_chunks`` tokens at a time)."""
    per_token = RESIDUAL_COPIES * dim * 4 + PROJECTION_COPIES * dim * dtype.itemsize
    ffn = FFN_COPIES * ffn_dim * dtype.itemsize * -(-tokens // ffn_chunks)
    return batch * (tokens * per_token + ffn)


def available_bytes(device: torch.device) -> int:
    """Memory a render may still use on ``device``: free CUDA memory, or the system's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(needed: int, device: torch.device, what: str, fix: str) -> None:
    """Raise :class:`InputError` (with the estimate and ``fix``) if ``needed`` bytes exceed what ``device`` has."""
    have = available_bytes(device)
    if needed > have:
        raise InputError(f"{what} needs about {needed / 2**30:.1f} GiB on {device}, but only "
                         f"{have / 2**30:.1f} GiB is available; {fix}")
