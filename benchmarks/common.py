"""Measurement helpers shared by the benchmarks: timing, peak memory, one worker process per run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process now (file-backed mapped pages included)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far: VmHWM of /proc/self/status.

    (Not ``ru_maxrss``: a process started from a big parent inherits the parent's high-water mark
    there, which would charge the benchmark driver's memory to every worker.)
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class PeakSampler:
    """Samples the RSS every few milliseconds while active: the peak of one phase of the run."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def median_seconds(fn: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    """Median wall time of ``runs`` calls of ``fn`` (after no warm-up: the first call counts)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def run_worker(module: str, *args: str) -> dict:
    """Run ``python -m <module> <args>`` in a fresh process; its last stdout line is a JSON result.

    A fresh process per implementation keeps each one's peak memory its own.
    """
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"worker {module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
