"""Benchmark 'long': memory and time of long videos, with and without context windows.

Plans (any machine, ``meta`` weights): the real t2v 1.3B config in bf16 at 832x480 for 81 / 161 / 241 / 481 frames,
CFG, each as one model call over the whole latent and with 81-frame windows overlapping by 30 frames: the planned
device peak for the call (weights + activations, the planner's own estimate, unlimited and at 8 GiB) plus the
latent itself (the solver's few latent-sized tensors and the windows' blend, counted as 6 copies of it).

Measured (CPU, the demo model, a fresh process per case): a whole render of 17 / 33 / 65 frames at the demo size,
plain and with 17-frame windows overlapping by 4: peak resident memory, seconds per step, and the model calls per
step (the windows).
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from .common import gib, run_worker

FRAMES = (81, 161, 241, 481)
LATENT_COPIES = 6  # x, noise, the prediction, the blend's sum and the solver's history: latent-sized fp32 tensors
DEMO_FRAMES = (17, 33, 65)


def print_plans() -> None:
    import wan_core
    from wan_core.job import call_shape

    from .memory import _meta_model

    model = _meta_model("t2v-1.3B", torch.bfloat16)
    windows = wan_core.RenderSettings(context=wan_core.ContextWindows(81, 30))
    print("t2v-1.3B (bf16) at 832x480, CFG: planned device peak of one model call + the latent (x6 fp32); "
          "without / with 81-frame windows (overlap 30)")
    for frames in FRAMES:
        shape = wan_core.SampleRequest(832, 480, frames).latent_shape()
        latent = LATENT_COPIES * 4 * torch.Size(shape).numel()
        cells = []
        for settings in (wan_core.RenderSettings(), windows):
            call = call_shape(settings, shape)
            count = 1 if settings.context is None else len(settings.context.windows(shape[2]))
            whole = wan_core.plan_for(model, call, True, "cuda", wan_core.UNLIMITED, compute_dtype=torch.bfloat16)
            try:
                small = wan_core.plan_for(model, call, True, "cuda", 8 * 2**30, compute_dtype=torch.bfloat16)
                fits = gib(small.peak + latent)
            except wan_core.InputError:
                fits = "does not fit"
            cells.append(f"{count} call(s) of {call[2]:>3d} latent frames: {gib(whole.peak + latent):>10} "
                         f"(at 8 GiB: {fits})")
        print(f"  {frames:>3d} frames, latent {shape[2]:>3d}: {cells[0]} | {cells[1]}")


def worker(frames: str, windowed: str, models: str) -> dict:
    """One demo render of ``frames`` frames (3 steps), with 17-frame windows when ``windowed`` is "1"."""
    import wan_core
    from wan_core.demo import DEMO_SIZE, write_demo_models

    torch.set_grad_enabled(False)
    dit = wan_core.load_dit(write_demo_models(models)["diffusion_models"])
    gen = torch.Generator().manual_seed(1)
    embeds = wan_core.TextEmbeds(torch.randn(1, 12, dit.config.text_dim, generator=gen),
                                 torch.randn(1, 20, dit.config.text_dim, generator=gen))
    context = wan_core.ContextWindows(17, 4) if windowed == "1" else None
    settings = wan_core.RenderSettings(steps=3, seed=1, context=context, resume="off")
    request = wan_core.SampleRequest(DEMO_SIZE["width"], DEMO_SIZE["height"], int(frames))
    calls = []
    forward = wan_core.WanDiT.forward
    wan_core.WanDiT.forward = lambda self, *a, **k: calls.append(1) or forward(self, *a, **k)
    start = time.perf_counter()
    wan_core.RenderJob(dit, embeds, settings, request).run(wan_core.StandaloneHost("cpu"))
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    return {"s_per_step": seconds / 3, "calls_per_step": len(calls) / 3, "peak": peak}


def main() -> None:
    from wan_core.demo import DEMO_SIZE, write_demo_models

    print_plans()
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_models(tmp)
        print(f"\nCPU, demo model at {DEMO_SIZE['width']}x{DEMO_SIZE['height']}, 3 steps, CFG batched: plain vs "
              "17-frame windows (overlap 4)")
        for frames in DEMO_FRAMES:
            cells = []
            for windowed in ("0", "1"):
                r = run_worker("benchmarks.long", str(frames), windowed, tmp)
                cells.append(f"{r['s_per_step']:.2f} s/step, {r['calls_per_step']:.0f} call(s)/step, peak RSS "
                             f"{gib(r['peak'])}")
            print(f"  {frames:>3d} frames: plain {cells[0]} | windows {cells[1]}")


if __name__ == "__main__":
    import json

    print(json.dumps(worker(*sys.argv[1:])))
