"""``python -m benchmarks gpu --out DIR``: the whole GPU acceptance in one call, for a session lent a GPU.

Runs, each in its own process with its own time budget (a step that fails or runs out of time is reported and
the run goes on), the CUDA tests and the GPU benchmarks on the real 1.3B config (one 14B row: fp8) with random
weights, and writes one markdown report (``DIR/gpu_report.md``) with the device name on every section.
``--dry-run`` lists the steps and budgets without running them (any machine). Budgets sum to at most
:data:`TOTAL_BUDGET_S`.

On a bare machine with torch but none of our other packages, install the wheels ``scripts/gpu_wheels.sh`` fetched
(``pip install --no-index --no-deps wheels/*.whl && pip install --no-deps -e .``) first.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TOTAL_BUDGET_S = 480
"""Eight minutes on an H100-class GPU for the whole acceptance."""


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: int
    argv: tuple[str, ...]
    what: str


PY = sys.executable
STEPS = (
    Step("cuda-tests", 140, (PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py",
                             "tests/test_gpu_memory.py", "tests/test_attention.py", "tests/test_gpu_ready.py",
                             "tests/test_fp8_matmul.py", "tests/test_gpu_fp8.py"),
         "CUDA tests: bf16 parity with the CPU, seeds, VAE fp32 / TF32, memory per budget (allocated and reserved), "
         "baseline after renders, flash / sage parity, fp8 matrix products"),
    Step("memory", 90, (PY, "-m", "benchmarks", "memory", "--device", "cuda"),
         "memory per budget: allocated / reserved peaks and s/step against resident, real 1.3B at 832x480x81"),
    Step("speed", 95, (PY, "-m", "benchmarks", "speed", "--device", "cuda", "--steps", "8"),
         "speed: sdpa / flash / sage x compile x step cache, 8 steps at 832x480x81, real 1.3B"),
    Step("fp8", 50, (PY, "-m", "benchmarks", "fp8", "--device", "cuda"),
         "fp8 matrix products against the cast path and bf16 weights: one forward of the real 1.3B (CFG batch) "
         "and 14B (one branch) configs at 832x480x81, s/forward, peaks, drift"),
    Step("gguf", 45, (PY, "-m", "benchmarks", "gguf", "--device", "cuda"),
         "GGUF forward per quant type against bf16, real 1.3B"),
    Step("lora", 35, (PY, "-m", "benchmarks", "lora"), "LoRA merge / unmerged cost on the real configs"),
    Step("vae", 25, (PY, "-m", "benchmarks", "vae", "--device", "cuda"),
         "VAE decode of 832x480x81, whole and tiled: seconds, allocated / reserved peaks"),
)


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return f"{props.name} (sm {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB, " \
                   f"torch {torch.__version__})"
        return f"no CUDA device (torch {torch.__version__})"
    except ImportError:
        return "torch is not installed"


def dry_run() -> str:
    """The steps, their budgets and the total, one line each."""
    lines = [f"{s.name:<11} {s.budget_s:>4d} s  {s.what}\n            $ {' '.join(s.argv[1:])}" for s in STEPS]
    total = sum(s.budget_s for s in STEPS)
    return "\n".join([*lines, f"total       {total:>4d} s (at most {TOTAL_BUDGET_S} s)"])


def _run(step: Step, device: str) -> str:
    """A markdown section: the step's output (its last 6000 characters), time and outcome."""
    start = time.monotonic()
    try:
        done = subprocess.run(step.argv, capture_output=True, text=True, timeout=step.budget_s)
        outcome = "passed" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        outcome = f"OUT OF TIME (budget {step.budget_s} s)"
        output = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    seconds = time.monotonic() - start
    return (f"## {step.name} on {device}: {outcome}, {seconds:.0f} s of {step.budget_s} s\n\n{step.what}\n\n"
            f"```\n{output[-6000:].strip()}\n```\n")


def main(out: str | None = None, dry: bool = False) -> None:
    if dry:
        print(dry_run())
        return
    device = _device_name()
    folder = Path(out or "gpu_report")
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "gpu_report.md"
    sections = [f"# GPU acceptance on {device}\n"]
    for step in STEPS:
        print(f"running {step.name} (budget {step.budget_s} s) ...", flush=True)
        sections.append(_run(step, device))
        report.write_text("\n".join(sections), encoding="utf-8")  # what ran so far survives a stop
    print(f"report: {report}")
