"""Benchmark 'experts': memory of the Wan2.2 models, planned and measured.

Plans (any machine, ``meta`` weights): an A14B expert in fp8 at 1280x720x81 and the TI2V-5B in bf16 at
1280x704x121, CFG 5, for 8 / 12 / 16 / 24 GiB and unlimited (a pair renders one expert at a time, each by its own
plan, so the pair's device peak is one expert's). Measured (CPU): a pair of the real 1.3B config written as two
bf16 files, memory-mapped, rendered with the switch after the first step (every block streamed, as on a small
GPU): the peak resident memory against one expert's file, split into file-backed pages (the mapped weights, which
the kernel can drop) and anonymous memory (what the render itself allocates).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from .common import gib, run_worker
from .memory import BUDGETS, _meta_model, print_plan_rows, write_weights

CASES = (("i2v-A14B", torch.float8_e4m3fn, (1280, 720, 81)), ("ti2v-5B", torch.bfloat16, (1280, 704, 121)))


def print_plans() -> None:
    import wan_core
    from wan_core.models.config import PRESETS

    for name, dtype, (width, height, frames) in CASES:
        model = _meta_model(name, dtype)
        shape = wan_core.SampleRequest(width, height, frames).latent_shape(PRESETS[name])
        what = "each expert" if name.endswith("A14B") else "the model"
        print(f"{name} ({str(dtype).removeprefix('torch.')}, {what} {gib(wan_core.module_bytes(model))}) at "
              f"{width}x{height}x{frames}, latent {shape}, CFG:")
        print_plan_rows(model, shape, BUDGETS[1:])


def _memory_now() -> dict[str, int]:
    """Peak and current resident memory of this process: total (VmHWM), file-backed and anonymous (kB -> B)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssFile", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


def worker(high: str, low: str, width: str = "256", height: str = "256", frames: str = "9") -> dict:
    """A two-step pair render (one step per expert) of the two files, every block streamed."""
    import wan_core

    torch.set_grad_enabled(False)
    experts = [wan_core.load_dit(path, compute_dtype=torch.float32) for path in (high, low)]
    pair = wan_core.ExpertPair(*experts, boundary=0.9)
    request = wan_core.SampleRequest(int(width), int(height), int(frames))
    gen = torch.Generator().manual_seed(1)
    context, negative = torch.randn(1, 40, 4096, generator=gen), torch.randn(1, 120, 4096, generator=gen)
    peaks = []

    def render_for(expert):
        block = max(wan_core.module_bytes(b) for b in expert.blocks)  # stored; computed in fp32, streamed 1 ahead
        budget = wan_core.module_bytes(expert) - sum(wan_core.module_bytes(b) for b in expert.blocks) + 2**30 + \
            8 * block
        return wan_core.RenderContext(plan=wan_core.plan_for(expert, request.latent_shape(), True, "cpu", budget))

    wan_core.sample_pair(pair, context, negative, request=request, steps=2, shift=5.0, render=render_for,
                         between=lambda first, second: peaks.append(_memory_now()))
    return {"at_switch": peaks[0], "end": _memory_now()}


def real_size_main(folder: str | None = None) -> None:
    """The measured pair at real size: two t2v A14B experts (the Wan2.1 14B shape) as fp8 files (13.3 GiB each,
    written streamed into ``folder``, default a temporary one: 27 GiB of disk), memory-mapped, one step per expert
    at 64x64x1 (a latent of one frame: the weights, not the activations, are what is measured)."""
    from .memory import write_weights_streamed

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        files = [Path(tmp) / f"{name}.safetensors" for name in ("high", "low")]
        for seed, path in enumerate(files):
            write_weights_streamed(path, "t2v-14B", torch.float8_e4m3fn, seed)
        size = files[0].stat().st_size
        r = run_worker("benchmarks.experts", *map(str, files), "64", "64", "1")
    print(f"\nCPU, a pair of real-size A14B t2v experts in fp8 ({gib(size)} each), one step per expert at "
          "[1, 16, 1, 8, 8], every block streamed:")
    _print_peaks(r, size)


def _print_peaks(r: dict, size: int) -> None:
    for label, m in (("at the switch", r["at_switch"]), ("at the end", r["end"])):
        print(f"  {label}: peak RSS {gib(m['VmHWM'])} ({m['VmHWM'] / size:.2f}x one expert's file); now "
              f"{gib(m['RssFile'])} file-backed (mapped weights, reclaimable) + {gib(m['RssAnon'])} anonymous")


def main() -> None:
    print_plans()
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"{name}.safetensors" for name in ("high", "low")]
        for path in files:
            write_weights(path)
        size = files[0].stat().st_size
        r = run_worker("benchmarks.experts", *map(str, files))
    print(f"\nCPU, a pair of real t2v-1.3B bf16 files ({gib(size)} each), one step per expert at [1, 16, 3, 32, 32], "
          "every block streamed:")
    _print_peaks(r, size)


if __name__ == "__main__":
    import json

    print(json.dumps(worker(*sys.argv[1:])))
