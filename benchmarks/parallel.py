"""Benchmark 'parallel': sequence parallelism (Ulysses) over 1, 2, ... processes on one machine.

Each case runs ``N`` processes (torch.distributed: gloo on CPUs, NCCL on GPUs, one GPU per rank) that time the DiT
forward of one sampling step (CFG batched: batch 2) with the tokens split over the ranks, and count what each rank
sends: the bytes of every all-to-all around the self-attentions and of the final gather. Printed per case: seconds
per step, the ratio to one process, the all-to-alls per step and their bytes; and the communication the real
configs would need at 832x480x81, from the same per-layer rule.

``python -m benchmarks parallel``: the demo model on the CPU at 1 and 2 ranks (two cores cannot make two ranks
faster: they share the cores, and the all-to-alls go through local sockets). ``--device cuda --model t2v-14B``:
the real config with random weights, bf16, on 1, 2, 4, 8 GPUs as the machine has them, and the 8-GPU figure
against LightX2V's published 8xH100 time.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .common import gib

LIGHTX2V_8XH100 = 0.75  # s/it, i2v 14B 480p on 8 H100 (LightX2V's published figure)
REAL = {"t2v-1.3B": (1536, 30), "t2v-14B": (5120, 40), "i2v-14B": (5120, 40)}  # width, blocks
CPU_SIZE = (256, 256, 17)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Counter:
    """Counts the bytes this rank hands to all-to-alls and gathers (its send buffers)."""

    def __init__(self):
        self.all_to_all, self.gather = [], []
        self._a2a, self._gather = dist.all_to_all_single, dist.all_gather

    def __enter__(self) -> _Counter:
        def all_to_all_single(output, input, *args, **kwargs):
            self.all_to_all.append(input.numel() * input.element_size())
            return self._a2a(output, input, *args, **kwargs)

        def all_gather(parts, tensor, *args, **kwargs):
            self.gather.append(tensor.numel() * tensor.element_size())
            return self._gather(parts, tensor, *args, **kwargs)

        dist.all_to_all_single, dist.all_gather = all_to_all_single, all_gather
        return self

    def __exit__(self, *exc) -> None:
        dist.all_to_all_single, dist.all_gather = self._a2a, self._gather


def _model_and_inputs(case: dict, device: torch.device):
    import wan_core
    from wan_core.demo import write_demo_models

    from .fp8 import _inputs, random_dit

    size = tuple(case["size"])
    if case["model"] == "demo":
        with tempfile.TemporaryDirectory() as tmp:
            model = wan_core.load_dit(write_demo_models(tmp)["diffusion_models"])
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(2, *wan_core.SampleRequest(*size).latent_shape()[1:], generator=gen)
        return model, (x, torch.full((2,), 700.0), torch.randn(2, 24, model.config.text_dim, generator=gen)), {}
    model = random_dit(case["model"], device, False, torch.bfloat16)
    inputs = _inputs(case["model"], 2, size, device, torch.bfloat16)
    extra = {}
    if model.config.has_image_branch:  # CLIP tokens and the image latents with their mask
        x = inputs[0]
        extra = {"clip_fea": torch.randn(2, model.config.clip_tokens, model.config.clip_dim, device=device,
                                         dtype=torch.bfloat16),
                 "y": torch.randn(2, model.config.in_dim - x.shape[1], *x.shape[2:], device=device)}
    return model, inputs, extra


def _rank(rank: int, world: int, port: int, case: dict, out: str) -> None:
    import wan_core
    from wan_core.parallel import SequenceParallelRunner

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(case["device"] if case["device"] == "cpu" else f"cuda:{rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    torch.set_grad_enabled(False)
    try:
        model, inputs, extra = _model_and_inputs(case, device)
        runner = wan_core.ResidentRunner()
        render = wan_core.RenderContext(device=device, runner=SequenceParallelRunner(runner) if world > 1 else runner)
        model(*inputs, render=render, **extra)  # warm-up
        times = []
        with _Counter() as counted:
            for _ in range(case["runs"]):
                _sync(device)
                dist.barrier()
                start = time.perf_counter()
                model(*inputs, render=render, **extra)
                _sync(device)
                times.append(time.perf_counter() - start)
        tokens = inputs[0][0, 0].numel() // 4  # latent cells / (2 x 2 patches)
        result = {"s_per_step": statistics.median(times), "tokens": tokens,
                  "all_to_all": len(counted.all_to_all) / case["runs"],
                  "a2a_bytes": statistics.mean(counted.all_to_all) if counted.all_to_all else 0,
                  "gather_bytes": sum(counted.gather) / case["runs"],
                  "peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0}
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _case(world: int, case: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/result.json"
        mp.spawn(_rank, args=(world, _port(), case, out), nprocs=world)
        return json.loads(Path(out).read_text())


def print_real_volume(ranks=(2, 4, 8)) -> None:
    """Bytes each rank sends per step for the real configs at 832x480x81, CFG batched, bf16: per block 4
    all-to-alls (q, k, v to heads; the output back) of that rank's ``[2, L/N, dim]`` share, plus the final gather."""
    tokens = 21 * 30 * 52  # 81 frames -> 21 latent frames of 60x104 cells -> 30x52 patches
    print(f"real configs at 832x480x81 ({tokens} tokens), CFG batched, bf16: what each rank sends per step")
    for name, (dim, blocks) in REAL.items():
        cells = []
        for n in ranks:
            a2a = 2 * (tokens // n) * dim * 2
            step = 4 * blocks * a2a + 2 * -(-tokens // n) * dim * 4  # the gather is of fp32 block outputs
            cells.append(f"{n} ranks: {4 * blocks} x {a2a / 2**20:.1f} MiB = {step / 2**30:.2f} GiB/step")
        print(f"  {name:9s} " + " | ".join(cells))


def main(device: str | None = None, model: str | None = None, runs: int = 3, size: tuple | None = None) -> None:
    device = device or "cpu"
    model = model or ("demo" if device == "cpu" else "t2v-14B")
    size = size or (CPU_SIZE if device == "cpu" else (832, 480, 81))
    available = os.cpu_count() if device == "cpu" else torch.cuda.device_count()
    ranks = (1, 2) if device == "cpu" else tuple(n for n in (1, 2, 4, 8) if n <= available)
    case = {"device": device, "model": model, "size": list(size), "runs": runs}
    print(f"{model} on {device} at {size[0]}x{size[1]}x{size[2]}, one step = one CFG-batched forward, median of "
          f"{runs}:")
    base = None
    for n in ranks:
        r = _case(n, case)
        base = base or r["s_per_step"]
        comm = (f"{r['all_to_all']:.0f} all-to-alls/step of {r['a2a_bytes'] / 2**20:.2f} MiB each, gather "
                f"{r['gather_bytes'] / 2**20:.2f} MiB" if n > 1 else "no communication")
        peak = f", peak {gib(r['peak'])}" if r["peak"] else ""
        print(f"  {n} rank(s): {r['s_per_step']:.3f} s/step ({base / r['s_per_step']:.2f}x one rank), {comm}{peak}")
        if n == 8 and model.endswith("14B") and size[:2] == (832, 480):
            ratio = r["s_per_step"] / LIGHTX2V_8XH100
            print(f"    vs LightX2V 8xH100 i2v 14B 480p {LIGHTX2V_8XH100} s/it: {ratio:.2f}x its time")
    if device != "cpu" and 8 not in ranks:
        print(f"  1, 2, 4, 8 GPUs asked; this machine has {available}: the larger counts and the LightX2V comparison "
              "wait for a machine with 8 GPUs")
    if device == "cpu":
        print(f"  ({available} CPU cores: the ranks share them, so two ranks are not faster here)")
    print_real_volume()
