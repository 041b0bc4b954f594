"""Benchmark 'memory': the memory plan for the real configs at several device budgets, and what it costs.

Plans (any machine, ``meta`` weights): t2v-1.3B in bf16 at 832x480x81 and t2v-14B in fp8 at 1280x720x81, CFG 5,
for budgets of 6 / 8 / 12 / 16 / 24 GiB and unlimited: blocks resident / streamed, CFG mode, feed-forward chunks,
planned peak. Peak RSS (CPU): the real 1.3B config written with random bf16 weights, loaded and sampled one CFG
step at [1, 16, 3, 32, 32] with every block streamed, against the file's size. On CUDA (``--device cuda``) each
budget is also enforced with ``torch.cuda.set_per_process_memory_fraction`` and one CFG step is timed; the peak
device memory and seconds per step are printed against the fully resident render's.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .common import gib, peak_rss_bytes, run_worker

BUDGETS = (6, 8, 12, 16, 24, None)  # GiB; None: no limit
CASES = (("t2v-1.3B", torch.bfloat16, (832, 480)), ("t2v-14B", torch.float8_e4m3fn, (1280, 720)))


def _meta_model(name: str, dtype: torch.dtype):
    import wan_core
    from wan_core.models.config import PRESETS

    with torch.device("meta"):
        model = wan_core.WanDiT(PRESETS[name], compute_dtype=torch.bfloat16)
    return model.to(dtype)


def print_plans() -> None:
    import wan_core

    for name, dtype, size in CASES:
        model = _meta_model(name, dtype)
        shape = wan_core.SampleRequest(*size, 81).latent_shape()
        print(f"{name} ({str(dtype).removeprefix('torch.')}, weights {gib(wan_core.module_bytes(model))}) at "
              f"{size[0]}x{size[1]}x81, CFG:")
        print_plan_rows(model, shape, BUDGETS)


def print_plan_rows(model, shape: tuple[int, ...], budgets) -> None:
    """One line per budget (GiB; None: no limit): the plan for ``shape`` with CFG, or why nothing fits."""
    import wan_core

    for budget in budgets:
        label = f"{budget:>3d} GiB" if budget else "   none"
        try:
            plan = wan_core.plan_for(model, shape, True, "cuda", budget * 2**30 if budget else wan_core.UNLIMITED,
                                     compute_dtype=torch.bfloat16)
            print(f"  {label}: {plan.describe()}")
        except wan_core.InputError as err:
            print(f"  {label}: does not fit: {err}")


def write_weights(path: Path, name: str = "t2v-1.3B", dtype: torch.dtype = torch.bfloat16) -> None:
    """Random weights of a real config in the official layout, written one tensor at a time in ``dtype``."""
    import wan_core
    from wan_core.models.config import PRESETS

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in wan_core.WanDiT(PRESETS[name]).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    save_file({k: (torch.randn(s, generator=gen) * 0.02).to(dtype) for k, s in shapes.items()}, path)


SAFETENSORS_DTYPES = {torch.float8_e4m3fn: "F8_E4M3", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.float32: "F32"}


def write_weights_streamed(path: Path, name: str, dtype: torch.dtype, seed: int = 0) -> None:
    """As :func:`write_weights`, for files larger than RAM: the safetensors header first, then each tensor's bytes
    as it is drawn (one tensor in memory at a time)."""
    import json

    import wan_core
    from wan_core.models.config import PRESETS

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in wan_core.WanDiT(PRESETS[name]).state_dict().items()}
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = torch.Size(shape).numel() * dtype.itemsize
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for shape in shapes.values():
            f.write((torch.randn(shape, generator=gen) * 0.02).to(dtype).view(torch.uint8).numpy().tobytes())


def worker(path: str, device: str, budget_gib: str) -> dict:
    """One CFG step (steps=1, cfg 5) of the model at ``path`` within ``budget_gib`` (0: no limit)."""
    import wan_core

    torch.set_grad_enabled(False)
    cuda = device == "cuda"
    model = wan_core.load_dit(path, compute_dtype=torch.bfloat16 if cuda else torch.float32)
    request = wan_core.SampleRequest(832, 480, 81) if cuda else wan_core.SampleRequest(256, 256, 9)
    budget = int(float(budget_gib) * 2**30) or None  # the planner's budget; the allocator is not capped, so the
    # measured allocated and reserved peaks show how far the render keeps to it (a cap would fail on slack alone)
    if not cuda:  # the CPU has no device limit: stream every block to measure what streaming holds in RAM
        budget = wan_core.module_bytes(model) - sum(wan_core.module_bytes(b) for b in model.blocks) + 2**30
    plan = wan_core.plan_for(model, request.latent_shape(), True, device, budget)
    if not plan.streamed:
        model.to(device)
    gen = torch.Generator().manual_seed(1)
    context, negative = torch.randn(1, 40, 4096, generator=gen), torch.randn(1, 120, 4096, generator=gen)
    seconds = []
    for _ in range(2 if cuda else 1):  # CUDA: the first step warms the kernels up
        render = wan_core.RenderContext(device=device, plan=plan)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        wan_core.sample(model, context, negative, request=request, steps=1, cfg=5.0, render=render)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"plan": plan.describe(), "seconds": seconds[-1], "peak_rss": peak_rss_bytes(),
            "cuda_peak": torch.cuda.max_memory_allocated() if cuda else 0,
            "cuda_reserved": torch.cuda.max_memory_reserved() if cuda else 0,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu"}


def main(device: str = "cpu") -> None:
    print_plans()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dit-1.3B-bf16.safetensors"
        write_weights(path)
        size = path.stat().st_size
        if device != "cuda":
            r = run_worker("benchmarks.memory", str(path), "cpu", "0")
            print(f"\nCPU, real t2v-1.3B, bf16 file {gib(size)}, one CFG step at [1, 16, 3, 32, 32] with {r['plan']}: "
                  f"{r['seconds']:.1f} s, peak RSS {gib(r['peak_rss'])} ({r['peak_rss'] / size:.2f}x the file)")
            return
        base = run_worker("benchmarks.memory", str(path), "cuda", "0")
        print(f"\n{base['device']}, real t2v-1.3B bf16 at 832x480x81, one CFG step (seconds per step), peaks "
              "allocated / reserved by the caching allocator against the planner's budget:")
        print(f"  resident: {base['seconds']:.2f} s, CUDA peak {gib(base['cuda_peak'])} allocated / "
              f"{gib(base['cuda_reserved'])} reserved, RSS {gib(base['peak_rss'])}")
        for budget in BUDGETS[:-1]:
            try:
                r = run_worker("benchmarks.memory", str(path), "cuda", str(budget))
            except RuntimeError as err:
                print(f"  {budget:>3d} GiB: failed: {str(err)[-300:]}")
                continue
            print(f"  {budget:>3d} GiB: {r['seconds']:.2f} s ({r['seconds'] / base['seconds']:.2f}x resident), "
                  f"CUDA peak {gib(r['cuda_peak'])} allocated / {gib(r['cuda_reserved'])} reserved "
                  f"({r['cuda_reserved'] / (budget * 2**30):.2f}x the budget), RSS {gib(r['peak_rss'])}; {r['plan']}")


if __name__ == "__main__":
    import json

    print(json.dumps(worker(*sys.argv[1:])))
