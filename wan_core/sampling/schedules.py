"""Flow-matching sigma schedules: the one shift formula and the official step spacings.

In flow matching ``x_sigma = (1 - sigma) x0 + sigma noise`` and the DiT is called with
``t = 1000 sigma``. The official pipelines call the model with ``t`` truncated to an integer, while
the solver steps use the exact float32 sigmas; both are kept here so runs match the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..constants import NUM_TRAIN_TIMESTEPS
from ..errors import InputError

UNIPC_SIGMA_MAX = torch.tensor(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS, dtype=torch.float32).item()
"""The official UniPC schedule starts at the largest training sigma, 0.999 (as float32)."""


def shift_sigmas(sigmas, shift: float):
    """The flow shift: ``sigma' = shift sigma / (1 + (shift - 1) sigma)``; shift > 1 spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass(frozen=True)
class Schedule:
    """A sampling schedule: ``sigmas`` ``[n + 1]`` float32 ending at 0, ``timesteps`` ``[n]`` for the model."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def tail(self, steps: int) -> Schedule:
        """The last ``steps`` steps (partial denoising starts part-way down the schedule)."""
        return Schedule(self.sigmas[-(steps + 1):], self.timesteps[-steps:])


def flow_schedule(steps: int, shift: float, sigma_max: float = 1.0) -> Schedule:
    """``steps`` evenly spaced sigmas from ``sigma_max`` towards 0, shifted, then a final 0.

    Computed in float64 like the official code; ``timesteps = trunc(1000 sigma)`` (the integers the
    official pipelines give the model), sigmas stored as float32.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise InputError(f"shift must be positive, got {shift!r} (the official default is 5.0)")
    # numpy's linspace, so every float64 value (and so every truncated timestep) is the official one
    sigmas = torch.from_numpy(shift_sigmas(np.linspace(sigma_max, 0.0, steps + 1)[:-1], shift))
    timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64).to(torch.float32)
    return Schedule(torch.cat([sigmas, sigmas.new_zeros(1)]).float(), timesteps)


LIGHTX2V_STEPS = (1000, 750, 500, 250)
"""The step list LightX2V's 4-step distill models and LoRAs are trained for (``denoising_step_list``)."""

CAUSVID_STEPS = {5120: (999, 934, 862, 756, 603, 410, 250, 140, 74), 1536: (1000, 750, 500, 250)}
"""The timesteps the CausVid LoRAs are run with: the 14B list (its first ``steps``) and the 1.3B 4-step list."""


def lightx2v_schedule(steps: int, shift: float) -> Schedule:
    """LightX2V's step-distill schedule (``WanStepDistillScheduler``): the training sigmas ``1 - k / 1000``
    (k = 0..999, float32) shifted, taken at ``k = 1000 - t`` for t in :data:`LIGHTX2V_STEPS`, then 0; the
    model is called with ``t = 1000 sigma`` unrounded. Shift 5: t = 1000, 937.5, 833.3, 625."""
    if steps != len(LIGHTX2V_STEPS):
        raise InputError(f"the lightx2v_4step sampler runs the {len(LIGHTX2V_STEPS)} steps its distill LoRAs are "
                         f"trained for; set steps to {len(LIGHTX2V_STEPS)} (got {steps})")
    base = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)[:-1]
    sigmas = shift_sigmas(base, shift)[[NUM_TRAIN_TIMESTEPS - t for t in LIGHTX2V_STEPS]]
    return Schedule(torch.cat([sigmas, sigmas.new_zeros(1)]), sigmas * NUM_TRAIN_TIMESTEPS)


def causvid_schedule(steps: int, dim: int) -> Schedule:
    """The CausVid LoRAs' schedule: the first ``steps`` of the 14B list (at most 9), or the 1.3B 4-step list
    (dim 1536 and narrower models), as timesteps; ``sigma = t / 1000`` with no shift, then 0."""
    table = CAUSVID_STEPS[5120 if dim >= 5120 else 1536]
    if dim < 5120 and steps != len(table) or steps > len(table):
        which = "14B: 1 to 9" if dim >= 5120 else "1.3B: exactly 4"
        raise InputError(f"the causvid sampler has a fixed list of steps ({which}); got steps={steps}")
    timesteps = torch.tensor(table[:steps], dtype=torch.float32)
    return Schedule(torch.cat([timesteps / NUM_TRAIN_TIMESTEPS, timesteps.new_zeros(1)]), timesteps)
