"""Context windows: a long latent denoised as overlapping windows at every step, their outputs blended.

A render longer than the model's comfortable length (81 frames, 21 latent frames) runs each model call as one
call per window, on that window's slice of the latent and of every conditioning that runs along the frames
(the i2v mask and image latents ``y``, the VACE context, one timestep per latent frame); the predictions are
blended per latent frame by the fuse weights, normalized so that they sum to 1 at every frame. The rules of the
schedules and weights are the ones ComfyUI's *WAN Context Windows* node uses (``comfy/context_windows.py``),
so a workflow moved to our nodes windows the same frames:

- ``static`` (its ``standard_static``): windows of ``length`` latent frames every ``length - overlap`` frames,
  the last one moved back to end flush with the clip; the same windows at every step.
- ``uniform`` (``standard_uniform``) and ``looped`` (``looped_uniform``): the windows start at an offset that
  changes from step to step (the bit-reversed step number as a fraction of the length), with ``stride`` > 1
  adding windows over every 2nd, 4th, ... frame; ``looped`` windows wrap around the end (for closed loops with
  ``closed_loop``), ``uniform`` ones are moved to end flush instead and duplicates are dropped. Where the native
  rules make a window that repeats a frame or lies past the clip's end, or leave a frame in no window (only with
  ``stride`` > 1), we drop that window / add a contiguous one, so every frame is denoised.
- fuse ``pyramid`` (weights rising from the edges to the middle), ``overlap-linear`` (1, ramping down to ~0
  over the overlap towards a neighbouring window), ``flat`` (1: a plain average).

Lengths are given in pixel frames, as on the native node, and turned into latent frames by the 4n+1 rule
(``(n - 1) // 4 + 1``). A window schedule is a pure function of the clip's length and the step number, so a
resumed render windows every step as the uninterrupted one did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..constants import VAE_STRIDE
from ..errors import InputError

SCHEDULES = ("static", "uniform", "looped")
FUSE_METHODS = ("pyramid", "overlap-linear", "flat")
WINDOWED_CONDITIONING = ("y", "vace_context")
"""Keyword arguments of the DiT whose 3rd dimension runs along the latent frames: sliced with each window."""


def to_latent_frames(pixel_frames: int) -> int:
    """Latent frames of a window of ``pixel_frames`` (the native node's rule: ``(n - 1) // 4 + 1``, at least 0)."""
    return max((pixel_frames - 1) // VAE_STRIDE[0] + 1, 0)


@dataclass(frozen=True)
class ContextWindows:
    """Context-window settings of a render (the Wan Context Windows node's, the CLI's ``--context-*``).

    frames / overlap: pixel frames per window and shared by neighbouring windows (latent: :attr:`length`,
    :attr:`latent_overlap`); schedule / fuse: see the module docstring; stride: the uniform schedules' largest
    frame step (1: contiguous windows only); closed_loop: ``looped`` windows also wrap from the end to the start.
    """

    frames: int = 81
    overlap: int = 30
    schedule: str = "static"
    fuse: str = "pyramid"
    stride: int = 1
    closed_loop: bool = False

    def __post_init__(self) -> None:
        for name in ("frames", "overlap", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"context window {name} must be a whole number, got {value!r}")
        step = VAE_STRIDE[0]
        if self.frames < step + 1 or (self.frames - 1) % step:
            lower = max(step + 1, self.frames - (self.frames - 1) % step)
            raise InputError(f"context window frames must be {step}n+1 and at least {step + 1} (81: the models' "
                             f"own length), got {self.frames}; use {lower} or {lower + step}")
        if self.overlap < 0 or self.latent_overlap >= self.length:
            raise InputError(f"context window overlap must be at least 0 and less than the window (in latent frames "
                             f"{self.latent_overlap} of {self.length}), got {self.overlap} of {self.frames} frames; "
                             f"try {self.frames * 3 // 8}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"context schedule {self.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
        if self.fuse not in FUSE_METHODS:
            raise InputError(f"context fuse method {self.fuse!r} is unknown; choose one of {', '.join(FUSE_METHODS)}")
        if self.stride < 1:
            raise InputError(f"context stride must be at least 1, got {self.stride}")
        if not isinstance(self.closed_loop, bool):
            raise InputError(f"closed_loop must be true or false, got {self.closed_loop!r}")

    @property
    def length(self) -> int:
        """Latent frames per window."""
        return to_latent_frames(self.frames)

    @property
    def latent_overlap(self) -> int:
        """Latent frames shared by neighbouring windows."""
        return to_latent_frames(self.overlap)

    @property
    def static(self) -> bool:
        """The same windows at every step (a step cache can keep its state per window)."""
        return self.schedule == "static"

    def windows(self, frames: int, step: int = 0) -> list[list[int]]:
        """The latent frame indices of each window of a clip of ``frames`` latent frames at ``step``."""
        if self.schedule == "static":
            return static_windows(frames, self.length, self.latent_overlap)
        return uniform_windows(frames, self.length, self.latent_overlap, step, self.stride,
                               looped=self.schedule == "looped", closed_loop=self.closed_loop)

    def weights(self, window: Sequence[int], frames: int) -> torch.Tensor:
        """float32 ``[len(window)]`` fuse weights of one window of a clip of ``frames`` latent frames (before
        normalization across windows)."""
        length = len(window)
        if self.fuse == "flat":
            return torch.ones(length)
        if self.fuse == "pyramid":
            return torch.tensor([float(min(i + 1, length - i)) for i in range(length)])
        weights, ramp = torch.ones(length), self.latent_overlap
        if ramp and min(window) > 0:  # a window before this one: ramp in (1e-37, never 0: every frame counts)
            weights[:ramp] = torch.linspace(1e-37, 1, ramp)
        if ramp and max(window) < frames - 1:  # a window after this one: ramp out
            weights[-ramp:] = torch.linspace(1, 1e-37, ramp)
        return weights

    def window_frames(self, frames: int) -> int:
        """Latent frames of the largest model call a clip of ``frames`` latent frames makes (what memory is
        planned for)."""
        return max(len(w) for w in self.windows(frames, 0))

    def describe(self, frames: int) -> str:
        """One line for the log: the windows of a clip of ``frames`` latent frames."""
        windows = self.windows(frames, 0)
        return (f"context windows: {len(windows)} of {self.length} latent frames ({self.frames} frames), overlap "
                f"{self.latent_overlap}, {self.schedule}, {self.fuse} fuse, over {frames} latent frames")


def check_windows(windows: ContextWindows | None, runner, frames: int) -> None:
    """A render's windows against its block runner: a step cache (a runner with state) compares each step with the
    last of the same input, so with several windows it needs one cache per window (:class:`PerWindowRunner`),
    and windows that stay the same from step to step (``static``)."""
    if windows is None or not hasattr(runner, "state"):
        return
    count = len(windows.windows(frames, 0))
    if count > 1 and not windows.static:
        raise InputError(f"a step cache keeps its state per window, so it needs windows that stay the same at "
                         f"every step; the {windows.schedule} schedule moves them: use the static schedule or no "
                         "step cache")
    if count > 1 and len(getattr(runner, "runners", ())) != count:
        raise InputError(f"a step cache with {count} context windows needs one cache per window (a PerWindowRunner "
                         f"of {count}); the render job makes it when the settings have both")


def static_windows(frames: int, length: int, overlap: int) -> list[list[int]]:
    """Windows of ``length`` every ``length - overlap`` frames; the last one ends flush with the clip."""
    if frames <= length:
        return [list(range(frames))]
    out, start = [], 0
    while start + length < frames:
        out.append(list(range(start, start + length)))
        start += length - overlap
    out.append(list(range(frames - length, frames)))
    return out


def bit_reversed_fraction(step: int) -> float:
    """``step``'s 64 bits in reverse order, as a fraction of 2^64 (0, 1/2, 1/4, 3/4, 1/8, ...: offsets that
    spread over the window as the steps go on)."""
    return int(f"{step:064b}"[::-1], 2) / (1 << 64)


def uniform_windows(frames: int, length: int, overlap: int, step: int, stride: int = 1, looped: bool = False,
                    closed_loop: bool = False) -> list[list[int]]:
    """The uniform schedules' windows at ``step`` (see the module docstring)."""
    if frames < length or (frames == length and not looped):
        return [list(range(frames))]
    strides = min(stride, int(math.ceil(math.log2(frames / length))) + 1)
    offset = bit_reversed_fraction(step)
    pad = int(round(frames * offset))
    out = []
    for spacing in (1 << k for k in range(strides)):
        end = frames + pad + (0 if looped and closed_loop else -overlap)
        for first in range(int(offset * spacing) + pad, end, length * spacing - overlap):
            out.append([i % frames for i in range(first, first + length * spacing, spacing)])
    out = [w for w in out if _valid(w, frames)]
    if not looped:
        out = [w for w in _unrolled(out, frames, length) if _valid(w, frames)]
    return _gaps_filled(out, frames, length)


def _gaps_filled(windows: list[list[int]], frames: int, length: int) -> list[list[int]]:
    """``windows`` and, for each run of frames none of them holds, contiguous windows from its first frame (the
    last moved back to end flush). The native rules leave such gaps only with ``stride`` > 1, where the windows over
    every 2nd frame skip odd frames that the wrapped contiguous windows did not reach; native then divides by a
    zero weight there."""
    covered = {i for w in windows for i in w}
    out, start = list(windows), 0
    while start < frames:
        if start in covered:
            start += 1
            continue
        first = min(start, frames - length)
        out.append(list(range(first, first + length)))
        covered.update(out[-1])
    return out


def _valid(window: list[int], frames: int) -> bool:
    """A window of distinct frames inside the clip. Where the native rules make another (a window over every
    2nd / 4th frame longer than the clip wraps onto itself, or is moved past its end: native's index then fails),
    it is left out; the contiguous windows cover every frame without it."""
    return len(set(window)) == len(window) and 0 <= min(window) and max(window) < frames


def _unrolled(windows: list[list[int]], frames: int, length: int) -> list[list[int]]:
    """``uniform``: a window that wraps past the end moves to end flush (a window starting at the frame it
    wrapped to is added after it when the next one lacks that frame); repeated windows are dropped."""
    windows, repeated, i = [list(w) for w in windows], [], 0
    while i < len(windows):
        wrap = next((k for k in range(1, len(windows[i])) if windows[i][k] < windows[i][k - 1]), None)
        if wrap is not None:
            first_wrapped = windows[i][wrap]
            windows[i] = _flush_with_end(windows[i], frames)
            if first_wrapped not in windows[(i + 1) % len(windows)]:
                windows.insert(i + 1, list(range(first_wrapped, first_wrapped + length)))
        if any(windows[i] == windows[k] for k in range(i)):
            repeated.append(i)
        i += 1
    return [w for k, w in enumerate(windows) if k not in set(repeated)]


def _flush_with_end(window: list[int], frames: int) -> list[int]:
    """The window's pattern of frames moved to start at 0, then to end at the last frame."""
    relative = [(i - window[0] + frames) % frames for i in window]
    return [i + frames - 1 - relative[-1] for i in relative]


def windowed(call: Callable[..., torch.Tensor], windows: ContextWindows, frames: int,
             timesteps: torch.Tensor, prefix: int = 0) -> Callable[..., torch.Tensor]:
    """``call`` (the DiT's signature: ``(x [B, C, F, h, w], t, context, **conditioning)``) as one call per window
    of ``windows`` over the ``frames - prefix`` latent frames after ``prefix`` (VACE reference frames, which
    every window carries), blended by the normalized fuse weights. ``t`` may be ``[B]`` or one per latent frame
    ``[B, F]`` (sliced); ``y`` / ``vace_context`` are sliced along their frames. The step (for the uniform
    schedules) is the first of the schedule's ``timesteps`` equal to the call's largest timestep. A render
    runner with per-window state (:class:`PerWindowRunner`) is told the window before each call. A clip that one
    window covers calls ``call`` as it is."""
    body = frames - prefix
    steps = [float(v) for v in timesteps]

    def step_of(t: torch.Tensor) -> int:
        value = float(t.max())
        return next((i for i, v in enumerate(steps) if v == value), 0)

    def call_windows(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **conditioning) -> torch.Tensor:
        lists = windows.windows(body, step_of(t))
        if len(lists) == 1 and lists[0] == list(range(body)):
            return call(x, t, context, **conditioning)
        out = count = None
        runner = getattr(conditioning.get("render"), "runner", None)
        for number, window in enumerate(lists):
            index = torch.tensor(list(range(prefix)) + [prefix + i for i in window], device=x.device)
            if hasattr(runner, "select"):
                runner.select(number)
            sliced = {k: v.index_select(2, index.to(v.device)) if k in WINDOWED_CONDITIONING and v is not None else v
                      for k, v in conditioning.items()}
            t_window = t.index_select(1, index.to(t.device)) if t.dim() == 2 else t
            pred = call(x.index_select(2, index), t_window, context, **sliced).float()
            weight = torch.cat([torch.ones(prefix), windows.weights(window, body)]).to(pred.device)
            if out is None:
                out = pred.new_zeros(*pred.shape[:2], frames, *pred.shape[3:])
                count = pred.new_zeros(frames)
            out.index_add_(2, index, pred * weight.view(1, 1, -1, 1, 1))
            count.index_add_(0, index, weight)
        return out / count.view(1, 1, -1, 1, 1)

    return call_windows


class PerWindowRunner:
    """A block runner with state (a step cache) kept per window of a static schedule: one fresh runner per window
    from ``make()``, the one of the window being computed chosen by :meth:`select`; its state for a resume file
    is every window's, prefixed ``w<number>.``."""

    def __init__(self, make: Callable[[], object], count: int):
        self.runners = [make() for _ in range(count)]
        self.current = 0

    def select(self, number: int) -> None:
        self.current = number

    def __call__(self, blocks, h: torch.Tensor, *args) -> torch.Tensor:
        return self.runners[self.current](blocks, h, *args)

    @property
    def identity(self) -> str:
        return f"per_window({len(self.runners)}, {getattr(self.runners[0], 'identity', type(self.runners[0]))})"

    @property
    def computed_steps(self) -> int:
        return min(getattr(r, "computed_steps", 0) for r in self.runners)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"w{n}.{k}": v for n, r in enumerate(self.runners) for k, v in r.state().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for n, runner in enumerate(self.runners):
            prefix = f"w{n}."
            runner.load_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
