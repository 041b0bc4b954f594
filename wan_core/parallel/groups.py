"""A render's parallel degrees (``--parallel ulysses=4,cfg=2``) and the process groups that carry them.

With world size ``W = ulysses x cfg``, rank ``r`` is in CFG branch ``r // ulysses`` (0: the prompt, 1: the negative
prompt) and shares its branch's tokens with the ``ulysses`` ranks of that branch; ranks ``r`` and ``r + ulysses``
exchange their branch's prediction for the guidance step. Every rank draws the same seeded noise and applies the
same solver step, so every rank holds the same latent after every step.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError
from .sequence import check_degree


@dataclass(frozen=True)
class ParallelSettings:
    """Degrees of a render over several processes: ``ulysses`` x ``ring`` ranks share the tokens (Ulysses splits the
    heads, which it must divide; ring attention, from yunchang, passes keys / values around the ring for what the
    heads cannot split further), ``cfg`` (1 or 2) splits the two CFG branches; the render needs ``ulysses x ring x
    cfg`` processes."""

    ulysses: int = 1
    cfg: int = 1
    ring: int = 1

    def __post_init__(self) -> None:
        for name in ("ulysses", "cfg", "ring"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"parallel {name} must be a whole number of processes (at least 1), got {value!r}")
        if self.cfg > 2:
            raise InputError(f"parallel cfg splits the two CFG branches: 1 or 2, got {self.cfg}")

    @property
    def degree(self) -> int:
        """Processes the render needs."""
        return self.sequence * self.cfg

    @property
    def sequence(self) -> int:
        """Ranks sharing one branch's tokens."""
        return self.ulysses * self.ring

    @classmethod
    def parse(cls, text: str) -> ParallelSettings:
        """``"ulysses=4,cfg=2"`` (each part optional; ``ring=N`` too) -> settings; anything else is an
        :class:`InputError`."""
        values = {}
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            name, _, value = part.partition("=")
            if name not in ("ulysses", "cfg", "ring") or not value.strip().isdigit():
                raise InputError(f"--parallel takes ulysses=N,cfg=1|2[,ring=N] (e.g. ulysses=4,cfg=2), got {text!r}")
            values[name] = int(value)
        return cls(**values)

    def __str__(self) -> str:
        return f"ulysses={self.ulysses},cfg={self.cfg}" + (f",ring={self.ring}" if self.ring > 1 else "")

    def check_for(self, heads: int | None, world: int | None) -> None:
        """The degrees against the model's ``heads`` and the ``world`` size (None: not known here)."""
        if heads is not None:
            check_degree(heads, self.ulysses, ring=self.ring)
        if self.ring > 1 and importlib.util.find_spec("yunchang") is None:
            raise InputError(f"ring={self.ring} runs yunchang's ring attention, which is not installed: pip install "
                             "yunchang, or use a Ulysses degree that divides the heads alone")
        if world is not None and world != self.degree:
            raise InputError(f"--parallel {self} needs {self.degree} processes, this run has {world}: launch with "
                             f"torchrun --nproc-per-node {self.degree}, or change the degrees")


@dataclass(frozen=True)
class ParallelGroups:
    """This rank's process groups of a render: its branch's sequence group and its CFG pair."""

    settings: ParallelSettings
    rank: int
    sequence: object  # process group of the ranks sharing this branch's tokens
    pair: object | None  # process group of the two ranks of this token shard's branches (cfg 2), else None
    ulysses: object = None  # with ring > 1: this rank's Ulysses group (consecutive ranks) within its branch
    ring: object = None  # with ring > 1: this rank's ring (every ulysses-th rank) within its branch

    @property
    def branch(self) -> int:
        """0: this rank computes the prompt's branch, 1: the negative prompt's."""
        return self.rank // self.settings.sequence

    def barrier(self) -> None:
        dist.barrier()

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank of the render (every rank calls this at the same point)."""
        value = torch.tensor([int(bool(flag))], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


_GROUPS: dict[ParallelSettings, ParallelGroups] = {}


def parallel_groups(settings: ParallelSettings) -> ParallelGroups:
    """The process groups of ``settings`` in the running process group (made once per process: every rank makes
    every group, in the same order, as torch.distributed requires)."""
    if not dist.is_available() or not dist.is_initialized():
        raise InputError(f"--parallel {settings} needs a process group: launch with torchrun --nproc-per-node "
                         f"{settings.degree}")
    if settings not in _GROUPS:
        world, rank = dist.get_world_size(), dist.get_rank()
        if world != settings.degree:
            raise InputError(f"--parallel {settings} needs {settings.degree} processes, this run has {world}")
        n, u, r = settings.sequence, settings.ulysses, settings.ring
        sequences = [dist.new_group(list(range(c * n, (c + 1) * n))) for c in range(settings.cfg)]
        pairs = [dist.new_group([s, s + n]) for s in range(n)] if settings.cfg == 2 else None
        mine = {}
        if r > 1:  # within each branch: Ulysses groups of consecutive ranks, rings across them
            for c in range(settings.cfg):
                for g in range(r):
                    members = [c * n + g * u + j for j in range(u)]
                    group = dist.new_group(members)
                    if rank in members:
                        mine["ulysses"] = group
                for j in range(u):
                    members = [c * n + g * u + j for g in range(r)]
                    group = dist.new_group(members)
                    if rank in members:
                        mine["ring"] = group
        _GROUPS[settings] = ParallelGroups(settings, rank, sequences[rank // n], None if pairs is None else
                                           pairs[rank % n], mine.get("ulysses"), mine.get("ring"))
    return _GROUPS[settings]


def forget_groups() -> None:
    """Drop the groups made in a process group that is being left (a new one makes its own)."""
    _GROUPS.clear()


def _collective_device() -> torch.device:
    """Where this backend's tensors must be: this rank's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def broadcast_from_first(tensors: list[torch.Tensor] | None, count: int) -> list[torch.Tensor]:
    """Rank 0's ``count`` tensors (float32 / bf16 / fp16, up to 4-D) on every rank of the process group, on the CPU:
    rank 0 passes them, the others None (their shapes and dtypes come first, in one small tensor)."""
    device = _collective_device()
    header = torch.zeros(count, 6, dtype=torch.int64, device=device)
    if tensors is not None:
        for row, tensor in zip(header, tensors):
            row[0], row[1] = _DTYPES.index(tensor.dtype), tensor.dim()
            row[2:2 + tensor.dim()] = torch.tensor(tensor.shape)
    dist.broadcast(header, src=0)
    out = []
    for i, row in enumerate(header.tolist()):
        shape, dtype = row[2:2 + row[1]], _DTYPES[row[0]]
        value = tensors[i].to(device).contiguous() if tensors is not None else torch.empty(shape, dtype=dtype,
                                                                                         device=device)
        dist.broadcast(value, src=0)
        out.append(value.cpu())
    return out


def cfg_parallel_denoiser(model, context: torch.Tensor, negative: torch.Tensor, scale: float, groups: ParallelGroups,
                          **conditioning):
    """``denoise(x, t)`` = uncond + scale (cond - uncond) with this rank computing its branch only (the prompt on
    branch 0, the negative on branch 1) and the two predictions exchanged in its CFG pair."""
    mine = context if groups.branch == 0 else negative

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x, t.expand(x.shape[0]), mine, **conditioning).float().contiguous()
        parts = [torch.empty_like(out) for _ in range(2)]
        dist.all_gather(parts, out, group=groups.pair)
        cond, uncond = parts
        return uncond + scale * (cond - uncond)

    return denoise
