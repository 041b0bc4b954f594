"""Step caches: block runners that skip blocks at steps where they would barely change the result, and add
what those blocks added at the last step that ran them.

Three ways to decide, each per CFG branch (the batch is split into ``branches`` equal parts, conditional
then unconditional, decided and kept separately, as the published recipes run them):

- first block (``FirstBlockCache``): the first block always runs; its residual (output - input) is compared
  with the one of the last computed step, ``mean|r - r_prev| / mean|r_prev|``; at or below ``threshold``
  the other blocks are skipped.
- MagCache (``MagCache``): nothing runs to decide; the published per-step magnitude ratios of the model's
  residual are multiplied since the last computed step and ``|1 - product|`` summed; while that sum stays
  at or below ``threshold`` every block is skipped.
- TeaCache (``TeaCache``): the relative L1 change of the blocks' time modulation ``e0`` since the previous
  step, rescaled by the published polynomial, is summed; while the sum stays below ``threshold`` every
  block is skipped (the polynomial is negative for very small changes: threshold 0 still never skips).

``start_steps`` first steps always compute; ``max_skips`` bounds the skipped steps in a row. The state lives
in the runner object (one per render, never on the model) and resumes with the render (:meth:`state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..errors import InputError
from .runners import ResidentRunner


@dataclass
class _Branch:
    tail: torch.Tensor | None = None  # what the skippable blocks added at the last computed step
    skipped: int = 0  # skipped steps in a row


class StepCache:
    """What the three caches share: branches, the per-step ``decisions`` (per step, which branches were
    computed), the bounds, and the state a resumed render continues from."""

    kind = ""
    _Branch = _Branch

    def __init__(self, threshold: float, branches: int = 1, start_steps: int = 0, max_skips: int | None = None):
        if not threshold >= 0 or branches < 1 or start_steps < 0 or (max_skips is not None and max_skips < 0):
            raise InputError(f"{self.kind} cache: threshold must be >= 0, branches >= 1, start_steps >= 0 and "
                             f"max_skips >= 0 or None; got {threshold}, {branches}, {start_steps}, {max_skips}")
        self.threshold, self.branches, self.start_steps, self.max_skips = threshold, branches, start_steps, max_skips
        self.decisions: list[tuple[bool, ...]] = []
        self._state = [self._Branch() for _ in range(branches)]
        self.inner = ResidentRunner()  # runs the blocks a step computes (compiled, or over several processes)

    def _parts(self, h: torch.Tensor) -> list[slice]:
        size = h.shape[0] // self.branches
        return [slice(b * size, (b + 1) * size) for b in range(self.branches)]

    def _must_compute(self, state: _Branch, step: int) -> bool:
        """The bounds every cache keeps: the first steps, a first computed step, the longest run of skips."""
        return (step < self.start_steps or state.tail is None
                or (self.max_skips is not None and state.skipped >= self.max_skips))

    def _finish(self, blocks: Sequence[nn.Module], start: torch.Tensor, inputs, compute: tuple[bool, ...]):
        """Run ``blocks`` from ``start`` for the computed branches (the whole batch in one pass when all are:
        with nothing skipped this is exactly the uncached forward) and add the kept tail for the others."""
        self.decisions.append(compute)
        parts = self._parts(start)
        if all(compute):
            out = self.inner(blocks, start, inputs)
            for state, part in zip(self._state, parts):
                state.tail, state.skipped = out[part] - start[part], 0
            return out
        pieces = []
        for state, part, run in zip(self._state, parts, compute):
            if run:
                out = self.inner(blocks, start[part], inputs.select(part))
                state.tail, state.skipped = out - start[part], 0
            else:
                out = start[part] + state.tail
                state.skipped += 1
            pieces.append(out)
        return torch.cat(pieces)

    def _settings(self) -> str:
        return f"threshold={self.threshold}, branches={self.branches}, start_steps={self.start_steps}, " \
               f"max_skips={self.max_skips}"

    @property
    def identity(self) -> str:
        """What decides this cache's results (part of a render's identity for resuming)."""
        return f"{self.kind}({self._settings()})"

    def state(self) -> dict[str, torch.Tensor]:
        """The cache's state as tensors (saved with a resume checkpoint); numbers as 0-d float64 / int64."""
        out = {"decisions": torch.tensor(self.decisions, dtype=torch.bool).reshape(-1, self.branches)}
        for b, branch in enumerate(self._state):
            for field in fields(branch):
                value = getattr(branch, field.name)
                if value is not None:
                    out[f"{b}.{field.name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state` (a resumed render)."""
        self.decisions = [tuple(bool(v) for v in row) for row in state["decisions"].tolist()]
        for b, branch in enumerate(self._state):
            for field in fields(branch):
                value, default = state.get(f"{b}.{field.name}"), field.default
                if value is not None and isinstance(default, (int, float)):
                    value = type(default)(value.item())
                setattr(branch, field.name, default if value is None else value)

    @property
    def computed_steps(self) -> int:
        """Steps at which every branch ran all blocks."""
        return sum(all(d) for d in self.decisions)


@dataclass
class _FirstBlockBranch(_Branch):
    head_residual: torch.Tensor | None = None  # the first block's residual at the last computed step


class FirstBlockCache(StepCache):
    """A block runner with a first-block cache (see the module docstring)."""

    kind = "first_block"
    _Branch = _FirstBlockBranch

    def __call__(self, blocks: Sequence[nn.Module], h: torch.Tensor, inputs) -> torch.Tensor:
        first = self.inner(blocks[:1], h, inputs)
        residual = first - h
        step = len(self.decisions)
        compute = tuple(self._decide(state, step, residual[part])
                        for state, part in zip(self._state, self._parts(h)))
        return self._finish(blocks[1:], first, inputs, compute)

    def _decide(self, state: _FirstBlockBranch, step: int, residual: torch.Tensor) -> bool:
        compute = self._must_compute(state, step) or state.head_residual is None or \
            ((residual - state.head_residual).abs().mean() / state.head_residual.abs().mean()).item() > self.threshold
        if compute:
            state.head_residual = residual
        return compute


def nearest_resample(values: Sequence[float], length: int) -> list[float]:
    """``values`` stretched or squeezed to ``length`` by nearest index, ends kept: index
    ``round(i (n - 1) / (length - 1))`` (ties to even), or the last value alone when ``length`` is 1
    (how the published MagCache fits its calibrated ratios to another step count)."""
    if length == 1:
        return [values[-1]]
    scale = (len(values) - 1) / (length - 1)
    return [values[round(i * scale)] for i in range(length)]


@dataclass
class _MagBranch(_Branch):
    ratio: float = 1.0  # product of the magnitude ratios since the last computed step
    error: float = 0.0  # sum of |1 - ratio| over those steps


class MagCache(StepCache):
    """A block runner with MagCache (see the module docstring).

    ratios: per branch, one magnitude ratio per step (``ratios[b][i]``: step ``i`` of branch ``b``);
    a published table interleaves cond / uncond: :meth:`from_table` splits and resamples it.
    """

    kind = "mag"
    _Branch = _MagBranch

    def __init__(self, ratios: Sequence[Sequence[float]], threshold: float, start_steps: int = 0,
                 max_skips: int | None = None, table: str = ""):
        super().__init__(threshold, len(ratios), start_steps, max_skips)
        self.ratios, self.table = [list(r) for r in ratios], table

    @classmethod
    def from_table(cls, table: str, interleaved: Sequence[float], steps: int, branches: int, threshold: float,
                   start_steps: int = 0, max_skips: int | None = None) -> MagCache:
        """From a published interleaved (cond, uncond, cond, ...) list calibrated for any step count."""
        per_branch = [nearest_resample(interleaved[b::2], steps) for b in range(branches)]
        return cls(per_branch, threshold, start_steps, max_skips, table)

    def __call__(self, blocks: Sequence[nn.Module], h: torch.Tensor, inputs) -> torch.Tensor:
        step = len(self.decisions)
        compute = tuple(self._decide(b, state, step) for b, state in enumerate(self._state))
        return self._finish(blocks, h, inputs, compute)

    def _decide(self, b: int, state: _MagBranch, step: int) -> bool:
        if step < self.start_steps:
            return True
        ratios = self.ratios[b]
        state.ratio *= ratios[step] if step < len(ratios) else 1.0
        state.error += abs(1.0 - state.ratio)
        if self._must_compute(state, step) or state.error > self.threshold:
            state.ratio, state.error = 1.0, 0.0
            return True
        return False

    def _settings(self) -> str:
        return f"table={self.table!r}, ratios={self.ratios}, {super()._settings()}"


def polynomial(coefficients: Sequence[float], x: float) -> float:
    """``c0 x^n + c1 x^(n-1) + ... + cn`` (highest power first), by Horner's rule in float64."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


@dataclass
class _TeaBranch(_Branch):
    e0: torch.Tensor | None = None  # the time modulation at the previous step
    distance: float = 0.0  # rescaled change of e0 summed since the last computed step


class TeaCache(StepCache):
    """A block runner with TeaCache (see the module docstring); ``coefficients``: the rescaling polynomial,
    highest power first."""

    kind = "tea"
    _Branch = _TeaBranch

    def __init__(self, coefficients: Sequence[float], threshold: float, branches: int = 1, start_steps: int = 0,
                 max_skips: int | None = None, table: str = ""):
        super().__init__(threshold, branches, start_steps, max_skips)
        self.coefficients, self.table = tuple(coefficients), table

    def __call__(self, blocks: Sequence[nn.Module], h: torch.Tensor, inputs) -> torch.Tensor:
        step = len(self.decisions)
        compute = tuple(self._decide(state, step, inputs.e6[part])
                        for state, part in zip(self._state, self._parts(h)))
        return self._finish(blocks, h, inputs, compute)

    def rescaled_change(self, previous: torch.Tensor, current: torch.Tensor) -> float:
        """The polynomial of ``mean|current - previous| / mean|previous|`` (e0 ``[B, 6, C]`` fp32)."""
        return polynomial(self.coefficients, ((current - previous).abs().mean() / previous.abs().mean()).item())

    def _decide(self, state: _TeaBranch, step: int, e0: torch.Tensor) -> bool:
        previous, state.e0 = state.e0, e0
        if self._must_compute(state, step) or previous is None:
            state.distance = 0.0
            return True
        state.distance += self.rescaled_change(previous, e0)
        if self.threshold > 0 and state.distance < self.threshold:  # the polynomial can be < 0
            return False
        state.distance = 0.0
        return True

    def _settings(self) -> str:
        return f"table={self.table!r}, coefficients={self.coefficients}, {super()._settings()}"
