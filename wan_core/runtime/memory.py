"""How much memory a render needs and has: a DiT activation estimate checked before anything is allocated.

The estimate counts what is alive at the peak of one DiT block for the whole CFG batch: the fp32
residual streams, the q / k / v / attention tensors, and the feed-forward's hidden layer (constants
measured on our forward: see :func:`dit_activation_bytes`). Attention itself runs in memory-efficient
kernels (no ``L x L`` score matrix). Weights are not counted: they are already where they are.
"""

from __future__ import annotations

import os

import torch

from ..errors import InputError

STREAM_COPIES = 3
"""fp32 ``[B, L, C]`` residual streams alive inside a block: the embedded tokens, the block's input (held by
the runner) and the block's new stream."""

ATTENTION_COPIES = 5
"""Compute-dtype ``[B, L, C]`` tensors at the self-attention peak: its input, q, k, v and one projection
(norms, modulation and rotary run a slice of tokens at a time: ``layers.by_rows``)."""

FFN_COPIES = 2
"""Compute-dtype ``[B, L, ffn]`` tensors of the feed-forward (the first Linear's output and its GELU), beside
its compute-dtype input."""

TOKEN_CHUNK = 8192
"""Tokens per slice of row-wise work (norms, modulation, rotary: ``models.layers.by_rows``): their fp32
temporaries exist for one slice at a time (at 720p, 75,600 tokens x 5120 wide, a whole fp32 copy is 1.44 GiB;
a slice 0.16 GiB)."""

SLICE_COPIES = 4
"""fp32 ``[B, TOKEN_CHUNK, C]`` temporaries of one slice of row-wise work."""

DEQUANTIZE_CHUNK = 1 << 23
"""Values of a GGUF weight dequantized at a time (``models.quantized.dequantize``): the float32 temporaries of the
block formulas (up to ~3.3 copies) exist for one chunk (32 MiB each), not for the whole weight (a 14B
feed-forward weight: 283 MiB per fp32 copy, 9 chunks; few enough that the extra kernel launches cost little on a
GPU)."""



def dequantize_temporary_bytes() -> int:
    """An upper bound of those temporaries: 4 float32 copies of one chunk (measured peak: 3.33 copies, Q5_K)."""
    return 4 * 4 * DEQUANTIZE_CHUNK


MARGIN = 1.05
"""Allocator rounding and the small tensors (modulation, time embedding, masks) on top of the counted ones."""


def dit_activation_bytes(dim: int, ffn_dim: int, tokens: int, batch: int, dtype: torch.dtype,
                         ffn_chunks: int = 1) -> int:
    """Peak activation bytes of one DiT forward over ``batch`` sequences of ``tokens`` tokens (the
    feed-forward's hidden layer over ``tokens / ffn_chunks`` tokens at a time); the every-block text keys /
    values and VACE hints are not included. Checked against the live tensors of our forward, counted on the
    ``meta`` device for the real configs (tests/test_memory_plan.py)."""
    rows, size = batch * tokens, dtype.itemsize
    stream = STREAM_COPIES * dim * 4 * rows
    attention = ATTENTION_COPIES * dim * size * rows
    ffn = (dim * rows + FFN_COPIES * ffn_dim * batch * -(-tokens // ffn_chunks)) * size
    slices = SLICE_COPIES * dim * 4 * batch * min(tokens, TOKEN_CHUNK)
    return int((stream + max(attention, ffn) + slices) * MARGIN)


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


def check_fits(needed: int, device: torch.device, what: str, fix: str, have: int | None = None) -> None:
    """Raise :class:`InputError` (with the estimate and ``fix``) if ``needed`` bytes exceed ``have`` (None: what
    ``device`` has free now)."""
    have = available_bytes(device) if have is None else have
    if needed > have:
        raise InputError(f"{what} needs about {size_text(needed)} on {device}, but only {size_text(have)} is "
                         f"available; {fix}")


def size_text(nbytes: int) -> str:
    """``nbytes`` for a message: GiB with two decimals, MiB below 0.1 GiB (tiny models, tiny budgets)."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 // 10 else f"{nbytes / 2**20:.1f} MiB"
