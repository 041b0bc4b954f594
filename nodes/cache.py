"""WanCoreCache: the settings of a step cache, for the sampler's cache input."""

from __future__ import annotations

from ..wan_core import CACHE_KINDS, StepCacheSettings


class WanCoreCache:
    DESCRIPTION = ("Settings of a step cache for WanCoreSampler's cache input: at steps where the model would "
                   "barely change the result, its last contribution is reused instead of computed (per CFG "
                   "branch). mag: MagCache, tea: TeaCache, both with the published Wan2.1 tables for the model "
                   "(t2v 1.3B / 14B, i2v 480p / 720p by the render's size); first_block: the first block runs "
                   "and decides. Faster, at a small, threshold-dependent change of the video; resumable like "
                   "any render. -1 takes the published default.")
    CATEGORY = "WanCore/sampling"
    RETURN_TYPES = ("WANCORE_CACHE",)
    RETURN_NAMES = ("cache",)
    FUNCTION = "settings"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kind": (list(CACHE_KINDS), {"default": "mag", "tooltip": "The cache method."}),
            "threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.005, "tooltip": "Higher "
                          "reuses more steps: faster, further from the uncached video. 0 never reuses. -1: "
                          "mag 0.12; tea 0.05 (t2v 1.3B), 0.10 (t2v 14B), 0.20 (i2v); first_block 0.05."}),
            "start": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": "Share of the "
                      "first steps that always run every block (the composition forms there). -1: mag 0.2, "
                      "tea 0.1, first_block 0.2."}),
            "max_skips": ("INT", {"default": -1, "min": -1, "max": 100, "tooltip": "At most this many reused steps "
                          "in a row. -1: mag 2, tea no limit, first_block 3."}),
        }}

    def settings(self, kind, threshold, start, max_skips):
        unset = lambda value: None if value == -1 else value  # noqa: E731
        return (StepCacheSettings(kind, unset(threshold), unset(start), unset(max_skips)),)
