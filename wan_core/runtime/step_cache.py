"""Step caches: block runners that skip a step's remaining blocks when the first block says it would barely
change the result, and reuse what those blocks added at the last step that ran them.

First-block cache: at each step the first block runs; its residual (output - input) is compared with
the one of the last fully computed step, ``mean|r - r_prev| / mean|r_prev|``; above ``threshold``
every block runs (and the residual and the remaining blocks' contribution are kept), below it the
remaining blocks are skipped and their kept contribution is added to the first block's output.
The state lives in the runner object, so a new runner (one per render) starts clean; the batch is
split into ``branches`` (CFG: conditional, then unconditional) that are decided and kept separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from .runners import ResidentRunner

_REST = ResidentRunner()  # the remaining blocks, one after the other


@dataclass
class _Branch:
    head_residual: torch.Tensor | None = None  # first block's residual at the last fully computed step
    tail: torch.Tensor | None = None  # what the remaining blocks added then: last output - first block's output
    skipped: int = 0  # consecutive skipped steps


class FirstBlockCache:
    """A block runner with a first-block cache (see the module docstring).

    threshold: relative change of the first block's residual below which a step reuses the rest (0: never);
    branches: equal parts of the batch decided separately (2 for CFG's batch of cond + uncond);
    start_steps: the first steps always computed; max_skips: at most this many skipped steps in a row.
    ``decisions`` records, per step, which branches were computed.
    """

    def __init__(self, threshold: float, branches: int = 1, start_steps: int = 0, max_skips: int | None = None):
        if not threshold >= 0 or branches < 1 or start_steps < 0 or (max_skips is not None and max_skips < 0):
            raise InputError(f"first-block cache: threshold must be >= 0, branches >= 1, start_steps >= 0 and "
                             f"max_skips >= 0 or None; got {threshold}, {branches}, {start_steps}, {max_skips}")
        self.threshold, self.branches, self.start_steps, self.max_skips = threshold, branches, start_steps, max_skips
        self.decisions: list[tuple[bool, ...]] = []
        self._state = [_Branch() for _ in range(branches)]

    def __call__(self, blocks: Sequence[nn.Module], h: torch.Tensor, inputs) -> torch.Tensor:
        head, rest = blocks[0], blocks[1:]
        first = head(h, inputs)
        residual = first - h
        size = h.shape[0] // self.branches
        parts = [slice(b * size, (b + 1) * size) for b in range(self.branches)]
        compute = tuple(self._should_compute(state, residual[part]) for state, part in zip(self._state, parts))
        self.decisions.append(compute)
        if all(compute):  # the whole batch at once: with threshold 0 this is exactly the uncached render
            out = _REST(rest, first, inputs)
            for state, part in zip(self._state, parts):
                state.head_residual, state.tail, state.skipped = residual[part], out[part] - first[part], 0
            return out
        pieces = []
        for state, part, run in zip(self._state, parts, compute):
            if run:
                out = _REST(rest, first[part], inputs.select(part))
                state.head_residual, state.tail, state.skipped = residual[part], out - first[part], 0
            else:
                out = first[part] + state.tail
                state.skipped += 1
            pieces.append(out)
        return torch.cat(pieces)

    def _should_compute(self, state: _Branch, residual: torch.Tensor) -> bool:
        if state.head_residual is None or len(self.decisions) < self.start_steps:
            return True
        if self.max_skips is not None and state.skipped >= self.max_skips:
            return True
        change = (residual - state.head_residual).abs().mean() / state.head_residual.abs().mean()
        return change.item() > self.threshold

    @property
    def identity(self) -> str:
        """What decides this cache's results (part of a render's identity for resuming)."""
        return f"first_block(threshold={self.threshold}, branches={self.branches}, start_steps={self.start_steps}, " \
               f"max_skips={self.max_skips})"

    def state(self) -> dict[str, torch.Tensor]:
        """The cache's state as tensors (saved with a resume checkpoint)."""
        out = {"decisions": torch.tensor(self.decisions, dtype=torch.bool).reshape(-1, self.branches)}
        for b, branch in enumerate(self._state):
            out[f"{b}.skipped"] = torch.tensor(branch.skipped)
            if branch.head_residual is not None:
                out[f"{b}.head_residual"], out[f"{b}.tail"] = branch.head_residual, branch.tail
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state` (a resumed render)."""
        self.decisions = [tuple(bool(v) for v in row) for row in state["decisions"].tolist()]
        for b, branch in enumerate(self._state):
            branch.skipped = int(state[f"{b}.skipped"])
            branch.head_residual, branch.tail = state.get(f"{b}.head_residual"), state.get(f"{b}.tail")

    @property
    def computed_steps(self) -> int:
        """Steps at which every branch ran all blocks."""
        return sum(all(d) for d in self.decisions)


CACHE_KINDS = ("first_block",)


@dataclass(frozen=True)
class StepCacheSettings:
    """A step cache as a render setting (the node's and the CLI's); :meth:`runner` makes one per render."""

    kind: str = "first_block"
    threshold: float = 0.05  # relative change of the first block's residual below which a step is reused
    start: float = 0.2  # share of the first steps that always run every block (composition forms there)
    max_skips: int | None = 3  # at most this many reused steps in a row (None: no limit)

    def __post_init__(self) -> None:
        if self.kind not in CACHE_KINDS:
            raise InputError(f"step cache {self.kind!r} is unknown; choose one of {', '.join(CACHE_KINDS)}")
        if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold < float("inf")):
            raise InputError(f"cache threshold must be a finite number >= 0, got {self.threshold!r} (0: never reuse)")
        if not 0 <= self.start <= 1:
            raise InputError(f"cache start must be a share of the steps from 0 to 1, got {self.start!r}")
        if self.max_skips is not None and self.max_skips < 0:
            raise InputError(f"cache max_skips must be >= 0 or None, got {self.max_skips!r}")

    def runner(self, steps: int, branches: int) -> FirstBlockCache:
        """A fresh cache for a render of ``steps`` steps whose batch holds ``branches`` CFG branches."""
        return FirstBlockCache(self.threshold, branches, round(self.start * steps), self.max_skips)
