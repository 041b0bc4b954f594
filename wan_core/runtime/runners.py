"""Block runners: how a network's stack of blocks is executed for one render.

A runner is ``runner(blocks, h, *args) -> h``: it calls ``block(h, *args)`` for each block in order
and may decide where each block's weights are and when they get there (streaming), whether a block
runs at all (step caches), or what is added between blocks (VACE hints), without touching the
blocks themselves. The model hands its blocks over; the render context chooses the runner.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from ..errors import RenderInterrupted


class BlockRunner(Protocol):
    def __call__(self, blocks: Sequence[nn.Module], h: torch.Tensor, *args) -> torch.Tensor:
        """Run ``blocks`` over the residual stream ``h`` (each block: ``h = block(h, *args)``)."""
        ...


class ResidentRunner:
    """Every block computes where its weights already are, one after the other (the default)."""

    def __call__(self, blocks: Sequence[nn.Module], h: torch.Tensor, *args) -> torch.Tensor:
        for block in blocks:
            h = block(h, *args)
        return h

    def __repr__(self) -> str:
        return "ResidentRunner()"


class InterruptibleRunner:
    """Runs the blocks where their weights are, asking ``interrupt()`` before each one.

    For long single passes (the 24-layer text encoder, one DiT step at 720p) a cancel takes effect
    within one block instead of at the end of the pass.
    """

    def __init__(self, interrupt: Callable[[], bool], what: str = "render"):
        self.interrupt = interrupt
        self.what = what

    def __call__(self, blocks: Sequence[nn.Module], h: torch.Tensor, *args) -> torch.Tensor:
        for i, block in enumerate(blocks):
            if self.interrupt():
                raise RenderInterrupted(f"{self.what} interrupted before block {i + 1} of {len(blocks)}")
            h = block(h, *args)
        return h


class CompiledRunner:
    """Runs each block through ``torch.compile`` (Inductor), wrapping another runner's loop or the plain one.

    Blocks are compiled whole (``fullgraph``: a graph break is an error, not a silent slowdown); the
    compiled code is cached by torch per block code and input shapes, so a second render with another
    seed, prompt or step count at the same size compiles nothing. The first render pays the compile.
    """

    def __init__(self, inner: BlockRunner | None = None, mode: str | None = None):
        self.inner = inner or ResidentRunner()
        self.mode = mode
        self._compiled: dict[int, nn.Module] = {}

    def __call__(self, blocks: Sequence[nn.Module], h: torch.Tensor, *args) -> torch.Tensor:
        compiled = [self._compile(block) for block in blocks]
        return self.inner(compiled, h, *args)

    def __getattr__(self, name: str):
        """The wrapped runner's identity, state and records (a step cache's), as if it ran alone."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _compile(self, block: nn.Module) -> Callable:
        """A block's own way to be compiled (``block.compiled(compile_fn)``, see the DiT's blocks), or the whole."""
        if id(block) not in self._compiled:
            compile_fn = functools.partial(torch.compile, fullgraph=True, mode=self.mode)
            self._compiled[id(block)] = block.compiled(compile_fn) if hasattr(block, "compiled") else compile_fn(block)
        return self._compiled[id(block)]


FP8_COMPILE_CAPABILITY = (8, 9)
"""Inductor generates fp8 code only for GPUs with fp8 support (Ada, Hopper and newer)."""


def compile_unavailable(model: nn.Module, device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot compile ``model``'s blocks on ``device`` (no Triton for a GPU, fp8 weights on a
    GPU older than compute capability 8.9), or None: the render then runs eagerly instead of failing."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if importlib.util.find_spec("triton") is None:
        return "Inductor needs Triton on a GPU and it is not installed (common on Windows: pip install triton-windows)"
    fp8 = any(p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for p in model.parameters())
    have = tuple(torch.cuda.get_device_capability(device))
    if fp8 and have < FP8_COMPILE_CAPABILITY:
        return (f"Inductor has no fp8 code for this GPU (compute capability {have[0]}.{have[1]}, fp8 needs "
                f"{FP8_COMPILE_CAPABILITY[0]}.{FP8_COMPILE_CAPABILITY[1]}); store the model as bf16 / fp16 to compile")
    return None
