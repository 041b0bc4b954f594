"""Benchmark 'fp8': fp8 matrix products against the cast path and bf16 weights, on the real configs.

Real t2v 1.3B (CFG batch of 2) and 14B (one branch) configs with random weights made on the device (N(0, 1/fan in)
for weights, so activations keep their scale through the blocks), at 832x480x81 by default: one DiT forward per
case, the median of ``runs`` after a warm-up, for bf16 weights (1.3B only), fp8 weights cast to bf16 (the default
path), and fp8 weights multiplying in fp8 (``RenderContext(fp8_matmul=True)``); with the peak allocated / reserved
device memory, and the output's relative L2 distance from the bf16-weight output (1.3B) or the cast path (14B).
(On the CPU the activations and the first row's weights are fp32.)

``python -m benchmarks fp8 --device cuda``. On the CPU (``--device cpu``, a small ``--width/--height/--frames``)
the same code runs, fp8 products included (torch runs them on the CPU, slowly): a check of the code, not figures.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

import wan_core
from wan_core.models.config import PRESETS
from wan_core.runtime.fp8_matmul import fp8_matmul_unavailable

from .common import gib

FP8 = torch.float8_e4m3fn


def random_dit(name: str, device: torch.device, fp8: bool, dtype: torch.dtype) -> wan_core.WanDiT:
    """The real ``name`` config with random weights made on ``device``: Linear / convolution weights N(0, 1/fan in)
    (in fp8 for 2-D weights when ``fp8``, as the loader stores them), norm weights 1, biases 0."""
    with torch.device("meta"):
        model = wan_core.WanDiT(PRESETS[name], compute_dtype=dtype)
    gen = torch.Generator(device).manual_seed(0)
    for name_, param in list(model.named_parameters()):
        owner, _, leaf = name_.rpartition(".")
        module = model.get_submodule(owner)
        if param.dim() >= 2:
            value = torch.randn(param.shape, generator=gen, device=device, dtype=dtype) / param[0].numel() ** 0.5
        else:
            value = (torch.ones if "norm" in owner and leaf == "weight" else torch.zeros)(param.shape, device=device,
                                                                                         dtype=dtype)
        if fp8 and param.dim() == 2 and leaf == "weight":
            value = value.to(FP8)
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    model.fp8_matmul = fp8
    return model.to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(model, inputs, render, runs: int, device: torch.device) -> tuple[torch.Tensor, float, int, int]:
    """(output, median seconds of ``runs`` forwards after one warm-up, peak allocated, peak reserved bytes)."""
    out = model(*inputs, render=render)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        out = model(*inputs, render=render)
        _sync(device)
        times.append(time.perf_counter() - start)
    peaks = ((torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device))
             if device.type == "cuda" else (0, 0))
    return out.float(), statistics.median(times), *peaks


def _inputs(name: str, batch: int, size: tuple[int, int, int], device: torch.device, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(1)
    shape = (batch, *wan_core.SampleRequest(*size).latent_shape()[1:])
    x = torch.randn(shape, generator=gen).to(device)
    context = torch.randn(batch, 512, PRESETS[name].text_dim, generator=gen).to(device, dtype)
    return x, torch.full((batch,), 700.0, device=device), context


def _row(label: str, seconds: float, allocated: int, reserved: int, base: float, drift: str) -> str:
    memory = f"peak {gib(allocated)} allocated / {gib(reserved)} reserved  " if reserved else ""
    return f"  {label:34s} {seconds:8.3f} s/forward ({base / seconds:4.2f}x the first row)  {memory}{drift}"


def _case(name: str, batch: int, size, device, runs: int, with_bf16: bool, fp8_products: bool) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = _inputs(name, batch, size, device, dtype)
    print(f"{name} at {size[0]}x{size[1]}x{size[2]}, batch {batch}, {dtype} activations, {device}:")
    rows, reference, base = [], None, None
    if with_bf16:
        model = random_dit(name, device, False, dtype)
        reference, base, *peaks = _timed(model, inputs, wan_core.RenderContext(), runs, device)
        rows.append(_row(f"{str(dtype).removeprefix('torch.')} weights", base, *peaks, base, "reference"))
        del model
    model = random_dit(name, device, True, dtype)
    cast, seconds, *peaks = _timed(model, inputs, wan_core.RenderContext(fp8_matmul=False), runs, device)
    base = base or seconds
    drift = "reference" if reference is None else f"drift {_rel(cast, reference):.2e} rel. L2"
    reference = cast if reference is None else reference
    rows.append(_row(f"fp8 weights, cast to {str(dtype).removeprefix('torch.')}", seconds, *peaks, base, drift))
    print("\n".join(rows))
    if fp8_products:
        fast, seconds, *peaks = _timed(model, inputs, wan_core.RenderContext(fp8_matmul=True), runs, device)
        print(_row("fp8 weights, fp8 matrix products", seconds, *peaks, base,
                   f"drift {_rel(fast, reference):.2e} rel. L2"))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def main(device: str = "cuda", width: int = 832, height: int = 480, frames: int = 81, runs: int = 3) -> None:
    torch.set_grad_enabled(False)
    device = torch.device(device)
    reason = fp8_matmul_unavailable(device)
    fp8_products = reason is None or device.type == "cpu"
    if reason:
        print(f"note: {reason}" + ("; forced on the CPU for a code check" if device.type == "cpu" else
                                   "; only the cast path is measured"))
    size = (width, height, frames)
    _case("t2v-1.3B", 2, size, device, runs, True, fp8_products)
    if device.type == "cuda":  # 14 GB of fp8 weights: one branch, no bf16 copy
        _case("t2v-14B", 1, size, device, max(1, runs - 1), False, fp8_products)
