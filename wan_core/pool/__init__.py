"""Parallel renders started from one process (ComfyUI): a pool of worker processes on the other devices, given
each render as plain values (:mod:`.recipe`); see :mod:`.workers`."""

from .workers import PoolSpec, WorkerPool, current_pool, pool_devices, render_parallel, shutdown_pool

__all__ = ["PoolSpec", "WorkerPool", "current_pool", "pool_devices", "render_parallel", "shutdown_pool"]
