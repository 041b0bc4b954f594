"""The Wan2.2 A14B expert pair: two DiTs of one architecture, one for the high-noise steps and one for the rest.

The official rule (``wan/text2video.py``, ``wan/image2video.py``): a step whose timestep is at least ``boundary``
x 1000 runs the high-noise expert, every later step the low-noise one; each expert has its own guidance scale.
An :class:`ExpertPair` has the DiT's call signature (it calls the expert of the timestep), so anything that
takes a DiT takes a pair; the sampler runs each expert's steps as its own stretch of one solver run
(``sampling.loop.sample_pair``), which lets a render job place one expert at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

NUM_TRAIN_TIMESTEPS = 1000

EXPERT_DEFAULTS = {
    "t2v": {"boundary": 0.875, "shift": 12.0, "steps": 40, "cfg_high": 4.0, "cfg_low": 3.0},
    "i2v": {"boundary": 0.900, "shift": 5.0, "steps": 40, "cfg_high": 3.5, "cfg_low": 3.5},
}
"""The official settings of the Wan2.2 A14B pairs (``wan/configs/wan_t2v_A14B.py``, ``wan_i2v_A14B.py``)."""


@dataclass(frozen=True)
class ExpertPair:
    """``high`` and ``low`` (DiTs, or handles of them carrying their own LoRAs) split at ``boundary`` (0..1 of the
    timesteps); ``cfg_high`` / ``cfg_low``: each expert's guidance scale (None: the render's cfg)."""

    high: object
    low: object
    boundary: float
    cfg_high: float | None = None
    cfg_low: float | None = None
    is_expert_pair = True

    def __post_init__(self) -> None:
        b = self.boundary
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 < b < 1.0:
            raise InputError(f"the expert boundary must be a fraction of the timesteps between 0 and 1 (official: "
                             f"0.875 for t2v, 0.9 for i2v), got {b!r}")
        high, low = self.high.config, self.low.config
        if high != low:
            raise InputError(f"the two experts must be of one architecture; the high-noise one is {high.label}, "
                             f"the low-noise one {low.label}: load the matching pair of files")
        for name in ("cfg_high", "cfg_low"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1.0):
                raise InputError(f"{name} must be a number of at least 1.0 (1.0: no negative pass), got {value!r}")

    @classmethod
    def with_defaults(cls, high, low, boundary: float | None = None, cfg_high: float | None = None,
                      cfg_low: float | None = None) -> ExpertPair:
        """A pair with the official boundary and guidance of its task where not given."""
        defaults = EXPERT_DEFAULTS.get(high.config.model_type, EXPERT_DEFAULTS["t2v"])
        return cls(high, low, defaults["boundary"] if boundary is None else boundary,
                   defaults["cfg_high"] if cfg_high is None else cfg_high,
                   defaults["cfg_low"] if cfg_low is None else cfg_low)

    @property
    def config(self):
        return self.high.config

    @property
    def compute_dtype(self) -> torch.dtype:
        return getattr(self.high, "compute_dtype", torch.float32)

    @property
    def threshold(self) -> float:
        """The model time from which the high-noise expert runs: ``boundary`` x 1000."""
        return self.boundary * NUM_TRAIN_TIMESTEPS

    def is_high(self, t: torch.Tensor | float) -> bool:
        """Whether model time ``t`` (a number, or a tensor whose first value decides) is a high-noise step."""
        value = t.reshape(-1)[0].item() if isinstance(t, torch.Tensor) else float(t)
        return value >= self.threshold

    def expert_for(self, t):
        return self.high if self.is_high(t) else self.low

    def switch_step(self, timesteps: torch.Tensor) -> int:
        """How many leading steps of a schedule (its model times, descending) run the high-noise expert."""
        return sum(1 for t in timesteps.tolist() if t >= self.threshold)

    def check_conditioning(self, *args, **kwargs) -> None:
        self.high.check_conditioning(*args, **kwargs)

    def __call__(self, x, t, context, *args, **kwargs):
        return self.expert_for(t)(x, t, context, *args, **kwargs)
