"""A worker process of a parallel render pool (:mod:`.pool`): ``python -m wan_core.pool.worker --rank R ...``.

It joins the pool's process group through the host process's store, then renders each job the host posts
(``job/<n>``) with a standalone host on its device, until the host posts ``stop``, the host process ends or the
store goes away. A job that fails posts its error (``error/<rank>``) and ends the process: its connections close,
which ends the other ranks' pending collectives, and the pool is started again for the next render.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import RenderInterrupted
from ..host import StandaloneHost
from ..parallel.groups import ParallelSettings, forget_groups, parallel_groups
from .recipe import recipe_files, unpack_job

log = logging.getLogger("wan_core.pool.worker")

POLL_SECONDS = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wan_core.pool.worker", description=__doc__)
    for name in ("rank", "world", "port", "parent"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--degrees", required=True, help="ulysses=N,cfg=1|2")
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"wancore worker {args.rank}: %(levelname)s %(message)s")
    timeout = timedelta(seconds=args.timeout)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore("127.0.0.1", args.port, args.world, False, timeout=timeout)
    store.set(f"ready/{args.rank}", str(os.getpid()))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=args.rank,
                            world_size=args.world, timeout=timeout)
    parallel_groups(ParallelSettings.parse(args.degrees))  # with the host process, as it starts the pool
    torch.set_grad_enabled(False)
    loaded: dict = {}
    try:
        n = 0
        while _wait_for(store, f"job/{n}", args.parent):
            if store.get(f"job/{n}") == b"stop":
                break
            _render(store, n, args.rank, device, loaded)
            n += 1
    finally:
        forget_groups()
        dist.destroy_process_group()
    return 0


def _wait_for(store, key: str, parent: int) -> bool:
    """Wait until ``key`` is in the store; False when the host process has ended (or its store with it)."""
    while True:
        try:
            if store.check([key]):
                return True
        except Exception:  # the host process, which holds the store, is gone
            return False
        if os.getppid() != parent:
            return False
        time.sleep(POLL_SECONDS)


def _render(store, n: int, rank: int, device: torch.device, loaded: dict) -> None:
    """Job ``n`` on this rank; ``done/<n>/<rank>`` when it ends (also interrupted), else the error and exit."""
    try:
        header = store.get(f"job/{n}").decode()
        keep = recipe_files(json.loads(header)["model"])
        for key in set(loaded) - keep:  # a model no longer rendered: its memory goes back
            del loaded[key]
        job = unpack_job(header, store.get(f"job/{n}/tensors"), loaded)
        folder = store.get(f"job/{n}/resume").decode() or None
        job.run(StandaloneHost(device, resume_folder=folder, logger=log))
        store.set(f"done/{n}/{rank}", "ok")
    except RenderInterrupted:
        store.set(f"done/{n}/{rank}", "interrupted")
    except BaseException as err:
        log.exception("render %d failed", n)
        try:
            store.set(f"error/{rank}", f"{type(err).__name__}: {err}")
        finally:
            logging.shutdown()
            os._exit(1)  # not through the process group's teardown: peers may be waiting in a collective


if __name__ == "__main__":
    raise SystemExit(main())
