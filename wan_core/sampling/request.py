"""What a render asks for, checked as a whole before any work: sizes, seed, steps, cfg, shift, denoise.

Every check raises :class:`~wan_core.errors.InputError` naming the value and the fix; nothing here
allocates or loads anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from ..constants import (
    LATENT_CHANNELS,
    VAE_STRIDE,
    WAN22_LATENT_CHANNELS,
    WAN22_VAE_STRIDE,
    check_frame_count,
    check_pixel_size,
    latent_frames,
)
from ..errors import InputError

SEED_MAX = 2**64 - 1
"""Seeds are unsigned 64-bit integers, as ComfyUI's seed widget and torch's generators take them."""

MAX_STEPS = 1000
"""More steps than the model's training timesteps cannot be distinct."""


@dataclass(frozen=True)
class SampleRequest:
    """What to render: latent shape from width/height/frames, or from a start latent (video-to-video)."""

    width: int = 832
    height: int = 480
    frames: int = 81
    batch: int = 1

    def check(self) -> None:
        """Raise :class:`InputError` unless the sizes, frame count (4n+1) and batch are usable."""
        check_frame_count(self.frames)
        check_pixel_size(self.width, self.height)
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise InputError(f"batch must be a positive integer, got {self.batch!r}")

    def latent_shape(self, config=None) -> tuple[int, ...]:
        """``(batch, 16, F', H/8, W/8)`` after :meth:`check`; for a Wan2.2 TI2V-5B DiT (``config``) ``(batch, 48,
        F', H/16, W/16)``, width and height multiples of 32 (its VAE's 16 and the DiT's 2x2 patches)."""
        self.check()
        if config is None or config.model_type != "ti2v":
            return (self.batch, LATENT_CHANNELS, latent_frames(self.frames),
                    self.height // VAE_STRIDE[1], self.width // VAE_STRIDE[2])
        multiple = WAN22_VAE_STRIDE[1] * config.patch_size[1]
        for name, size in (("width", self.width), ("height", self.height)):
            if size % multiple:
                raise InputError(f"{name} {size} is not a multiple of {multiple} for the TI2V-5B model (its VAE "
                                 f"compresses 16x, its DiT patches 2x2): use {size - size % multiple} or "
                                 f"{size - size % multiple + multiple}")
        return (self.batch, WAN22_LATENT_CHANNELS, latent_frames(self.frames),
                self.height // WAN22_VAE_STRIDE[1], self.width // WAN22_VAE_STRIDE[2])


def check_seed(seed) -> int:
    """The seed as an int in 0 .. 2^64 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed must be an integer from 0 to {SEED_MAX} (2^64 - 1), got {seed!r}")
    return seed


def check_number(name: str, value, low: float, high: float = math.inf, *, low_open: bool = False,
                 fix: str = "") -> float:
    """``value`` as a float if it is a finite real number in [low, high] (or (low, high] with ``low_open``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bounds = f"{'above' if low_open else 'at least'} {low:g}"
        bounds += f" and at most {high:g}" if high < math.inf else ""
        raise InputError(f"{name} must be a finite number {bounds}, got {value!r}" + (f"; {fix}" if fix else ""))
    return float(value)


def check_settings(seed: int, steps: int, cfg: float, shift: float, denoise: float) -> None:
    """The sampler's scalar settings (the sampler name is checked with the schedule)."""
    check_seed(seed)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r} "
                         "(the official default is 50 for t2v, 40 for i2v)")
    check_number("cfg", cfg, 0.0, fix="5.0 is the official default; 1.0 skips the negative prompt")
    check_number("shift", shift, 0.0, low_open=True, fix="the official default is 5.0 (3.0 for 480p i2v)")
    check_number("denoise", denoise, 0.0, 1.0, low_open=True, fix="1.0 renders from pure noise")
