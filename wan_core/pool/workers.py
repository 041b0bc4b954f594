"""Parallel renders from inside one process (ComfyUI): a pool of worker processes on the other devices.

The host process is rank 0 of a process group whose other ranks are worker processes (:mod:`.worker`), one per
further device, started once and reused by later renders. A render is handed to the workers as plain values
through the process group's own key-value store (the model's files and LoRAs, the settings, one safetensors blob
of tensors: :mod:`.recipe`); every rank then runs the same :class:`~wan_core.job.RenderJob`, rank 0 with its host
(ComfyUI's model manager, progress, interrupt), the workers with a standalone host on their device. An interrupt
on rank 0 stops every rank at the same step (:meth:`ParallelGroups.any_rank`).

Failures end within a bounded time and are named: a worker that fails posts its error and exits, which ends
rank 0's pending collective; a worker killed outright breaks its connections likewise (or its peers' collectives
time out after ``timeout_s``). The pool is then shut down and the next render starts a fresh one.

Workers are started as ``python -m wan_core.pool.worker`` rather than forked or spawned by multiprocessing:
a spawned child imports the parent's main script again (ComfyUI's ``main.py``, with its start-up work), a fork
would copy a process that holds CUDA.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import InputError, RenderError, RenderInterrupted
from ..parallel.groups import ParallelSettings, forget_groups, parallel_groups
from .recipe import model_recipe, pack_job

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05


@dataclass(frozen=True)
class PoolSpec:
    """The devices of a parallel render, one per rank (``devices[0]``: the host process's own), its degrees, and
    how long a rank waits for the others (a collective, a worker's start or end) before the render fails."""

    devices: tuple[str, ...]
    settings: ParallelSettings
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        world = self.settings.degree
        if len(self.devices) != world:
            raise InputError(f"parallel {self.settings} needs {world} devices (this one and {world - 1} for the "
                             f"workers), got {len(self.devices)}: {', '.join(self.devices) or 'none'}")
        kinds = {torch.device(d).type for d in self.devices}
        if kinds - {"cpu", "cuda"} or len(kinds) > 1:
            raise InputError(f"a parallel render runs on GPUs (cuda:N) or on CPUs, one kind: got "
                             f"{', '.join(self.devices)}")
        gpus = [d for d in self.devices if torch.device(d).type == "cuda"]
        if len(set(map(torch.device, gpus))) < len(gpus):
            raise InputError(f"each rank of a parallel render needs its own GPU: {', '.join(self.devices)} names "
                             "one twice")
        if not self.timeout_s > 0:
            raise InputError(f"the parallel timeout must be a number of seconds above 0, got {self.timeout_s!r}")

    @property
    def backend(self) -> str:
        return "nccl" if torch.device(self.devices[0]).type == "cuda" else "gloo"


def pool_devices(text: str, world: int, own: torch.device, gpus: int) -> tuple[str, ...]:
    """The devices of a pool of ``world`` ranks, rank 0 on ``own`` (the host process's device): ``text`` lists the
    workers' GPUs (``"1,2,3"``), or ``"cpu"`` (every worker on the CPU, e.g. for a test), or is empty (the next
    GPUs after ``own`` of the ``gpus`` this machine has, as many as the degrees need)."""
    own, items = torch.device(own), [part.strip() for part in str(text).split(",") if part.strip()]
    if items == ["cpu"]:
        return (str(own), *["cpu"] * (world - 1))
    if not items:
        first = own.index or 0 if own.type == "cuda" else -1
        items = [str(i) for i in range(gpus) if i != first][:world - 1]
    if not all(item.isdigit() for item in items):
        raise InputError(f"the workers' GPUs are numbers separated by commas (e.g. 1,2,3), or cpu; got {text!r}")
    if len(items) != world - 1:
        raise InputError(f"{world} ranks need {world - 1} worker GPUs besides this one ({own}); "
                         f"{'the list gives' if text.strip() else 'this machine has'} {len(items)}: "
                         f"{', '.join(items) or 'none'}; give fewer ranks or more GPUs")
    missing = [item for item in items if int(item) >= gpus]
    if missing:
        raise InputError(f"GPU {missing[0]} is not on this machine, which has {gpus} (0 to {gpus - 1})")
    return (str(own), *[f"cuda:{item}" for item in items])


class WorkerPool:
    """Worker processes for ranks 1.. of ``spec`` and this process as rank 0 of their process group."""

    def __init__(self, spec: PoolSpec):
        if dist.is_initialized():
            raise InputError("this process is in a process group already (launched by torchrun?): a pool of workers "
                             "cannot start here; give the degrees to the torchrun render (--parallel) instead")
        self.spec, self._jobs, self.processes = spec, 0, []
        world, timeout = spec.settings.degree, timedelta(seconds=spec.timeout_s)
        self.store = dist.TCPStore("127.0.0.1", 0, world, True, timeout=timeout, wait_for_workers=False)
        try:
            self.processes = [self._start(rank) for rank in range(1, world)]
            self._await("ready", "start")
            if spec.backend == "nccl":  # a failed collective raises here instead of ending ComfyUI's process
                os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
                torch.cuda.set_device(torch.device(spec.devices[0]))
            dist.init_process_group(spec.backend, store=self.store, rank=0, world_size=world, timeout=timeout)
            parallel_groups(spec.settings)  # made now, with every worker: a render's first call is then a collective
        except BaseException:
            self.shutdown()
            raise
        log.info("parallel workers started: %s on %s", spec.settings, ", ".join(spec.devices))

    def _start(self, rank: int) -> subprocess.Popen:
        root = Path(__file__).resolve().parents[2]  # the folder holding wan_core (inside ComfyUI: the pack's)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(root), os.environ.get("PYTHONPATH"))))}
        args = [sys.executable, "-m", "wan_core.pool.worker", "--rank", str(rank), "--world",
                str(self.spec.settings.degree), "--port", str(self.store.port), "--device", self.spec.devices[rank],
                "--timeout", str(self.spec.timeout_s), "--parent", str(os.getpid()), "--degrees",
                str(self.spec.settings)]
        return subprocess.Popen(args, env=env, cwd=root, stdin=subprocess.DEVNULL)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def alive(self) -> bool:
        return self.store is not None and all(p.poll() is None for p in self.processes)

    def render(self, job, host, on_stop=None) -> torch.Tensor:
        """``job`` on every rank: the workers get it through the store, this process runs it on ``host``."""
        n, self._jobs = self._jobs, self._jobs + 1
        header, blob = pack_job(job)
        folder = host.resume_folder()
        self.store.set(f"job/{n}/tensors", blob)
        self.store.set(f"job/{n}/resume", "" if folder is None else str(folder))
        self.store.set(f"job/{n}", header)
        try:
            out = job.run(host, on_stop)
        except RenderInterrupted:
            self._await(f"done/{n}", "stop after the interrupt")
            self._forget(n)
            raise
        except BaseException as err:
            problem = self._worker_problem()
            self.shutdown()
            if problem:
                raise RenderError(f"the parallel render failed: {problem}. The workers were shut down; the next "
                                  "render starts them again (and resumes from the last finished step)") from err
            raise
        self._await(f"done/{n}", "finish the render")
        self._forget(n)
        return out

    def _forget(self, n: int) -> None:
        """Drop job ``n``'s blob from the store once every worker has finished it (a render's tensors would stay in
        this process's memory otherwise)."""
        for key in (f"job/{n}/tensors", f"job/{n}/resume"):
            self.store.delete_key(key)

    def _await(self, key: str, what: str) -> None:
        """Wait for ``key/<rank>`` from every worker, at most the timeout; a worker that exits or posts an error
        instead fails the render (the pool is shut down)."""
        deadline = time.monotonic() + self.spec.timeout_s
        waiting = set(range(1, self.spec.settings.degree))
        while waiting:
            waiting = {r for r in waiting if not self.store.check([f"{key}/{r}"])}
            problem = self._worker_problem(settle=0.0)
            if problem or (waiting and time.monotonic() > deadline):
                self.shutdown()
                problem = problem or (f"worker rank(s) {sorted(waiting)} did not {what} within "
                                      f"{self.spec.timeout_s:g} s")
                raise RenderError(f"the parallel render failed: {problem}. The workers were shut down; the next "
                                  "render starts them again")
            if waiting:
                time.sleep(POLL_SECONDS)

    def _worker_problem(self, settle: float = 2.0) -> str | None:
        """What went wrong with a worker: the error it posted, or how it ended; None while all run. ``settle``:
        seconds to let a worker that is failing post its error or end (after this process's collective broke)."""
        deadline = time.monotonic() + settle
        while True:
            for rank, process in enumerate(self.processes, start=1):
                device = self.spec.devices[rank]
                if self.store is not None and self.store.check([f"error/{rank}"]):
                    return f"worker rank {rank} ({device}) failed: {self.store.get(f'error/{rank}').decode()}"
                code = process.poll()
                if code is not None:
                    how = f"was killed (signal {-code})" if code < 0 else f"exited with code {code}"
                    return f"worker rank {rank} ({device}, process {process.pid}) {how}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)

    def shutdown(self) -> None:
        """Stop the workers (idle ones leave at once, busy ones are terminated) and leave the process group."""
        if self.store is not None and self.processes:
            try:
                self.store.set(f"job/{self._jobs}", "stop")
            except Exception:  # the store may be what broke; the processes are ended below anyway
                pass
        for process in self.processes:
            _end(process)
        forget_groups()
        if dist.is_initialized():
            dist.destroy_process_group()
        self.store, self.processes = None, []


def _end(process: subprocess.Popen, grace: float = 5.0) -> None:
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_POOL: WorkerPool | None = None
_LOCK = threading.Lock()


def render_parallel(job, host, spec: PoolSpec, on_stop=None) -> torch.Tensor:
    """Render ``job`` over ``spec``'s devices: this process (on ``host``) and the pool's workers, started for
    ``spec`` or reused from the last render with the same devices and degrees. The job is checked whole first,
    so bad input fails before any process starts."""
    global _POOL
    if job.settings.parallel != spec.settings:
        raise InputError(f"the render's parallel settings ({job.settings.parallel}) are not the pool's "
                         f"({spec.settings})")
    job.check(host.compute_device(), host)
    model_recipe(job.model)  # a model the workers cannot load from its files is refused here
    with _LOCK:
        if _POOL is not None and (_POOL.spec != spec or not _POOL.alive()):
            if not _POOL.alive():
                log.warning("a parallel worker has ended since the last render: starting the workers again")
            _POOL.shutdown()
            _POOL = None
        if _POOL is None:
            _POOL = WorkerPool(spec)
        pool = _POOL
        try:
            return pool.render(job, host, on_stop)
        finally:
            if pool.store is None:  # shut down by a failure: the next render starts a new pool
                _POOL = None


def current_pool() -> WorkerPool | None:
    """The running pool, if any."""
    return _POOL


def shutdown_pool() -> None:
    """End the workers of the running pool (ComfyUI's *Unload models* / ``/free``, and the process's exit)."""
    global _POOL
    with _LOCK:
        if _POOL is not None:
            _POOL.shutdown()
            _POOL = None
            log.info("parallel workers shut down")


atexit.register(shutdown_pool)
