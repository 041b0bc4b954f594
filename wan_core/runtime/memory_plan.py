"""The memory planner: from a device budget, what stays resident, what streams, and how the render runs.

A pure function of numbers (bytes): the budget (free device memory less a reserve, or the user's), each
block's weight bytes, the rest of the model's and the render's activation estimate for each way to run it.
Deterministic; its one-line description is logged and shown to the user.

Ways to run, for each the peak is ``other weights + activations + resident blocks + staging``, staging
being ``prefetch + 1`` of the largest streamed blocks (the one computing and those copying ahead):

- CFG as one batch of 2, or (``cfg_sequential``) one branch at a time: half the activations;
- the feed-forward over all tokens, or in ``ffn_chunks`` token chunks: its hidden layer divided.

Among the ways that fit, the plan keeps the most block bytes resident (so a smaller budget never keeps
more), then keeps batched CFG, whole feed-forward passes and the text keys / values, in that order.
Nothing fits: :class:`InputError` with the smallest budget that would (everything streamed, one branch at a
time, the most chunks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError
from .memory import available_bytes, dequantize_temporary_bytes, dit_activation_bytes, size_text
from .patches import view_bytes_change
from .streaming import module_bytes

FFN_CHUNKS = (1, 4, 16)
"""Token chunk counts the feed-forward may run in (1: whole)."""

DIT_FIX = "render fewer frames or a smaller size, or store the model in fp8 (or a GGUF quant)"
UNLIMITED = 2**62
"""The budget of a render with no device limit (the CPU, unless the user sets one)."""

PREFETCH = 1
"""Blocks copied ahead of the one computing."""


@dataclass(frozen=True)
class MemoryPlan:
    """Which blocks stay resident on the device (the first ones) and how the render runs."""

    resident: tuple[int, ...]  # block indices kept on the device for the whole render
    streamed: tuple[int, ...]  # block indices copied in one by one, ``prefetch`` ahead
    cfg_sequential: bool  # CFG branches one at a time
    ffn_chunks: int  # feed-forward token chunks
    prefetch: int
    budget: int  # bytes
    peak: int  # planned peak bytes on the device
    keys_values: bool = True  # the text keys / values of every block kept for the render (else made per call)
    guided: bool = True  # the model runs CFG branches (False: one pass per call, e.g. the text encoder, cfg 1)

    def describe(self) -> str:
        """One line for the log and the user."""
        blocks = len(self.resident) + len(self.streamed)
        parts = [f"{len(self.resident)}/{blocks} blocks resident"]
        if self.streamed:
            parts.append(f"{len(self.streamed)} streamed ({self.prefetch} ahead)")
        if self.guided:
            parts.append("CFG one branch at a time" if self.cfg_sequential else "CFG batched")
        if self.ffn_chunks > 1:
            parts.append(f"feed-forward in {self.ffn_chunks} chunks")
        if not self.keys_values:
            parts.append("text keys / values made at each step")
        limit = "no device limit" if self.budget >= UNLIMITED else f"of {size_text(self.budget)}"
        return f"memory plan: {', '.join(parts)}; peak ~{size_text(self.peak)} {limit}"


def plan_memory(budget: int, block_bytes: Sequence[int], other_bytes: int,
                activation_bytes: Callable[[int, int], int], cfg: bool, prefetch: int = PREFETCH,
                fix: str = DIT_FIX, kv_bytes: int = 0) -> MemoryPlan:
    """The plan for a device ``budget`` (bytes). ``activation_bytes(batch, ffn_chunks)``: the render's peak
    activations for a model call over ``batch`` sequences (2 with batched CFG); ``cfg``: the render uses CFG
    (and may run its branches one at a time). ``fix``: what the "cannot fit" error tells the user to change.
    ``kv_bytes``: the every-block text keys / values a render keeps (dropped, made at each call, when needed)."""
    options = []
    for keep in ((True, False) if kv_bytes else (True,)):
        for sequential in ((False, True) if cfg else (False,)):
            batch = 1 if sequential or not cfg else 2
            for chunks in FFN_CHUNKS:
                fixed = other_bytes + activation_bytes(batch, chunks) + (kv_bytes if keep else 0)
                resident = _resident_prefix(budget - fixed, block_bytes, prefetch)
                if resident is not None:
                    options.append((resident, keep, sequential, chunks, fixed))
    if not options:
        least = other_bytes + activation_bytes(1, FFN_CHUNKS[-1]) + (prefetch + 1) * max(block_bytes)
        raise InputError(f"this needs at least {size_text(least)} on the device even with every block "
                         f"streamed{', CFG one branch at a time' if cfg else ''} and the feed-forward in chunks, "
                         f"but the budget is {size_text(budget)}; {fix}")
    # the most resident bytes; then give up, cheapest first: the kept keys / values (~0.1% of a 720p step to make
    # again), whole feed-forward passes (chunks of thousands of tokens stay large GEMMs), batched CFG
    count, keep, sequential, chunks, fixed = max(
        options, key=lambda o: (sum(block_bytes[:o[0]]), not o[2], -o[3], o[1]))
    streamed = tuple(range(count, len(block_bytes)))
    staging = (prefetch + 1) * max((block_bytes[i] for i in streamed), default=0) if streamed else 0
    peak = fixed + sum(block_bytes[:count]) + staging
    return MemoryPlan(tuple(range(count)), streamed, sequential, chunks, prefetch if streamed else 0, budget, peak,
                      keep, cfg)


def _resident_prefix(room: int, block_bytes: Sequence[int], prefetch: int) -> int | None:
    """How many leading blocks fit in ``room`` bytes with the rest streaming (None: not even all streamed)."""
    if sum(block_bytes) <= room:
        return len(block_bytes)
    count, used = 0, 0
    for i, size in enumerate(block_bytes):
        staging = (prefetch + 1) * max(block_bytes[i:])  # the blocks after the resident ones stream
        if used + size + staging > room:
            break
        used, count = used + size, i + 1
    staging = (prefetch + 1) * max(block_bytes[count:])
    return count if used + staging <= room else None


RESERVE_BYTES = 1 * 2**30
"""Device memory left free by an automatic budget (the CUDA context, the allocator's slack, other work)."""


def plan_for(model, latent_shape, cfg: bool, device: torch.device, budget: int | None = None,
             compute_dtype: torch.dtype | None = None, allow_sequential: bool = True) -> MemoryPlan:
    """The plan for rendering ``latent_shape`` with ``model`` (a DiT: ``blocks``, ``config``) on ``device``.

    budget: bytes (None: the device's free memory less :data:`RESERVE_BYTES`; on a CPU everything is
    resident unless a budget is given). allow_sequential: False when something needs CFG batched (a step cache).
    """
    device = torch.device(device)
    if budget is None:
        budget = max(0, available_bytes(device) - RESERVE_BYTES) if device.type == "cuda" else UNLIMITED
    config, dtype = model.config, compute_dtype or getattr(model, "compute_dtype", torch.float32)
    tokens, batch = config.tokens(latent_shape), latent_shape[0]
    blocks, other = placed_bytes(model, dtype)

    # every block's text (and image) keys and values, made once per render for both CFG branches
    image_tokens = config.clip_tokens if config.has_image_branch else 0
    kv = 2 * config.num_layers * (config.text_len + image_tokens) * config.dim * batch * (2 if cfg else 1)
    kv *= dtype.itemsize

    hints = len(config.vace_layers) * tokens * config.dim * 4  # a VACE model's fp32 hints, held for the blocks

    def activations(cfg_batch: int, chunks: int) -> int:
        rows = batch * cfg_batch
        return dit_activation_bytes(config.dim, config.ffn_dim, tokens, rows, dtype, chunks) + hints * rows

    if cfg and not allow_sequential:  # CFG stays one batch of 2 (a step cache decides per branch within it)
        return plan_memory(budget, blocks, other, lambda _, chunks: activations(2, chunks), False, kv_bytes=kv)
    return plan_memory(budget, blocks, other, activations, cfg, kv_bytes=kv)


def placed_bytes(model, compute_dtype: torch.dtype) -> tuple[list[int], int]:
    """Device bytes of a render's view of a DiT: per block, and for the rest plus the largest temporary one layer
    makes to compute (:func:`weight_temporary_bytes`). The model's tensors as stored, changed by the LoRAs its
    handle carries as the view makes them (merged copies, unmerged low-rank pairs: ``patches.view_bytes_change``)."""
    blocks = [module_bytes(b) for b in model.blocks]
    other = module_bytes(model) - sum(blocks)
    for name, patch in (getattr(model, "weight_patches", None) or {}).items():
        change = view_bytes_change(model, name, patch, compute_dtype)
        kind, index, *_ = name.split(".") + [""]
        if kind == "blocks":
            blocks[int(index)] += change
        else:
            other += change
    return blocks, other + weight_temporary_bytes(model, compute_dtype)


def weight_temporary_bytes(model, compute_dtype: torch.dtype) -> int:
    """The largest temporary any one Linear of ``model`` makes to compute (they run one at a time): its weight cast
    to ``compute_dtype`` (fp8 / bf16 storage), or a GGUF weight dequantized with its chunk temporaries."""
    most = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "low_rank") or not isinstance(weight, torch.Tensor):  # not one of our Linears
            continue
        if getattr(module, "quantized", False):
            most = max(most, math.prod(module.weight_shape) * compute_dtype.itemsize + dequantize_temporary_bytes())
        elif weight.dtype != compute_dtype:
            most = max(most, weight.numel() * compute_dtype.itemsize)
    return most


def text_encoder_activation_bytes(config, prompts: int = 2, tokens: int = 512) -> int:
    """Peak activation bytes of a UMT5 encoder pass over ``prompts`` prompts of ``tokens`` tokens (fp32 upper
    bound): residual / norm / q, k, v, output copies, the gated feed-forward's three hidden tensors, and the
    ``[prompts, heads, tokens, tokens]`` position bias with the scores and their softmax."""
    per_token = 10 * config.dim * 4 + 3 * config.dim_ffn * 4
    return prompts * tokens * per_token + 4 * prompts * config.num_heads * tokens * tokens * 4


def plan_text_encoder(model, device: torch.device, budget: int | None = None, prompts: int = 2,
                      tokens: int = 512) -> MemoryPlan:
    """Where a UMT5 encoder (``model``: ``shared``, ``encoder.block``) runs for ``prompts`` prompts of up to
    ``tokens`` tokens: whole on the device when it fits ``budget`` (bytes; None: free memory less
    :data:`RESERVE_BYTES` on CUDA), else its leading layers resident and the rest streamed, the token table (a
    lookup) left in host memory."""
    device = torch.device(device)
    if budget is None:
        budget = max(0, available_bytes(device) - RESERVE_BYTES) if device.type == "cuda" else UNLIMITED
    blocks = [module_bytes(b) for b in model.encoder.block]
    table = module_bytes(model.shared)
    other = module_bytes(model) - sum(blocks) - table
    activations = text_encoder_activation_bytes(model.config, prompts, tokens) + \
        weight_temporary_bytes(model, getattr(model, "compute_dtype", torch.float32))
    whole = module_bytes(model) + activations
    if whole <= budget:
        return MemoryPlan(tuple(range(len(blocks))), (), False, 1, 0, budget, whole, guided=False)
    return plan_memory(budget, blocks, other, lambda _batch, _chunks: activations, cfg=False,
                       fix="load the text encoder as fp8_e4m3fn, or give the GPU more memory")
