"""Checkpointing cost: writing the sampler's whole state after every step, at the real 1.3B latent size.

832x480x81 -> latent [1, 16, 21, 60, 104]; UniPC's state is four such tensors (x, the uncorrected x
and two data predictions). Prints the seconds a step spends saving (what the sampling loop waits for)
and the file size, against the DiT's FLOP count for one CFG step at that size.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from wan_core.models.config import PRESETS
from wan_core.sampling.resume import ResumeFile
from wan_core.sampling.solvers import SolverState

from .dit import forward_flops

SHAPE = (1, 16, 21, 60, 104)
CPU_GFLOPS = 170.0  # the DiT's measured fp32 rate on this 2-core machine (benchmarks/dit.py)
H100_BF16_TFLOPS = 400.0  # a sustained dense bf16 rate for an H100 (not measured here)


def main(runs: int = 7) -> None:
    gen = torch.Generator().manual_seed(0)
    state = SolverState(3, torch.randn(SHAPE, generator=gen),
                        {k: torch.randn(SHAPE, generator=gen) for k in ("last_x", "x0_last", "x0_older")}, 2)
    with tempfile.TemporaryDirectory() as tmp:
        resume = ResumeFile(Path(tmp) / "slot.safetensors")
        waits, writes = [], []
        for i in range(runs):
            start = time.perf_counter()
            resume.save("identity", 50, SolverState(i + 1, state.x, state.history, 2))
            waits.append(time.perf_counter() - start)
            resume.flush()  # in a render the next step computes meanwhile; here: time the write on its own
            writes.append(time.perf_counter() - start)
        size = resume.path.stat().st_size
        start = time.perf_counter()
        loaded = resume.load("identity", 50)
        load_s = time.perf_counter() - start
    assert loaded is not None and torch.equal(loaded.x, state.x)
    step_flop = 2 * forward_flops(PRESETS["t2v-1.3B"], SHAPE)  # CFG: both halves
    cpu_step = step_flop / (CPU_GFLOPS * 1e9)
    gpu_step = step_flop / (H100_BF16_TFLOPS * 1e12)
    wait = statistics.median(waits)
    print(f"resume checkpoint at latent {list(SHAPE)} (UniPC state: 4 tensors), {torch.get_num_threads()} threads")
    print(f"  file {size / 2**20:.1f} MiB; the loop waits {wait * 1e3:.1f} ms per step for the host copy (median of "
          f"{runs}); the write itself, in the background, {statistics.median(writes) * 1e3:.1f} ms; load "
          f"{load_s * 1e3:.1f} ms")
    print(f"  one CFG step: {step_flop / 1e12:.1f} TFLOP = ~{cpu_step:.0f} s on this CPU ({wait / cpu_step:.4%}), "
          f"~{gpu_step:.2f} s on an H100 at {H100_BF16_TFLOPS:.0f} TFLOP/s ({wait / gpu_step:.2%}; estimated, "
          "not measured)")
