"""Test-session setup: Inductor's compiled-kernel cache is kept per CPU capability, so the suite run again under
``ATEN_CPU_CAPABILITY=default`` / ``avx2`` does not load kernels built for another instruction set (which
fail to compile or compute NaN: a cache that is not keyed by the capability)."""

from __future__ import annotations

import os
import tempfile

import torch

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"wancore_inductor_{torch.backends.cpu.get_cpu_capability().lower()}"))
