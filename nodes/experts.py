"""Wan Expert Pair: the two Wan2.2 A14B experts as one model for the sampler."""

from __future__ import annotations

from ..wan_core import EXPERT_DEFAULTS, ExpertPair

_OFFICIAL = ", ".join(f"{task} {values['boundary']}" for task, values in EXPERT_DEFAULTS.items())


class WanCoreExpertPair:
    DESCRIPTION = ("Joins the two Wan2.2 A14B experts into one model: the sampler runs the high-noise expert for the "
                   "steps whose timestep is at least boundary x 1000 and the low-noise expert for the rest, one "
                   "expert on the GPU at a time, each with its own guidance. Load each expert (and its LoRAs, e.g. "
                   "the Lightning LoRA made for it) before joining them.")
    CATEGORY = "WanCore/loaders"
    RETURN_TYPES = ("WANCORE_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "join"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "high_noise_model": ("WANCORE_MODEL", {"tooltip": "The high-noise expert (high_noise_model files)."}),
            "low_noise_model": ("WANCORE_MODEL", {"tooltip": "The low-noise expert (low_noise_model files)."}),
            "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.999, "step": 0.005, "tooltip":
                                   f"The switch, as a fraction of the timesteps. 0: the official one ({_OFFICIAL})."}),
            "cfg_high": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": "Guidance of "
                                   "the high-noise steps (the sampler's cfg is not used for a pair). 0: the official "
                                   "value (t2v 4.0, i2v 3.5); 1.0 for the 4-step Lightning LoRAs."}),
            "cfg_low": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": "Guidance of the "
                                  "low-noise steps. 0: the official value (t2v 3.0, i2v 3.5); 1.0 for Lightning."}),
        }}

    def join(self, high_noise_model, low_noise_model, boundary, cfg_high, cfg_low):
        return (ExpertPair.with_defaults(high_noise_model, low_noise_model, boundary or None, cfg_high or None,
                                         cfg_low or None),)
