"""WanCoreParallel: several GPUs for one render, for the sampler's parallel input."""

from __future__ import annotations

from ..wan_core import ParallelSettings, PoolSpec, pool_devices, setting_help
from . import host


class WanCoreParallel:
    DESCRIPTION = ("Renders with several GPUs of this machine: the sampler's GPU and worker processes on the others, "
                   "started on the first render and kept for the next ones (Unload models ends them). ulysses ranks "
                   "share each step's video tokens (DeepSpeed-Ulysses); cfg 2 computes the prompt and the negative "
                   "prompt on two groups of ranks at once. Needs ulysses x ring x cfg GPUs; ulysses must divide the "
                   "model's attention heads (12 for 1.3B, 40 for 14B, 24 for 5B). The video is the one-GPU video.")
    CATEGORY = "WanCore/sampling"
    RETURN_TYPES = ("WANCORE_PARALLEL",)
    RETURN_NAMES = ("parallel",)
    FUNCTION = "settings"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ulysses": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": "Ranks sharing the video tokens."}),
            "cfg": ("INT", {"default": 1, "min": 1, "max": 2, "tooltip": "2: the two CFG branches on two groups "
                    "of ranks (doubles the GPUs; no gain at cfg 1.0)."}),
        }, "optional": {
            "gpus": ("STRING", {"default": "", "tooltip": "The workers' GPUs, e.g. 1,2,3 (the sampler's own GPU is "
                     "rank 0). Empty: the next ones of this machine. cpu: workers on the CPU (slow; for tests)."}),
            "timeout_s": ("INT", {"default": 600, "min": 10, "max": 7200, "tooltip": "How long a rank waits for the "
                          "others before the render fails (a worker that died or hangs)."}),
            "ring": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "More ranks sharing the tokens than the "
                     "heads split: ulysses x ring ranks, ring attention across the Ulysses groups (needs the yunchang "
                     "package, bf16 / fp16 on GPUs, and a size whose tokens the ranks divide)."}),
        }}

    def settings(self, ulysses, cfg, gpus="", timeout_s=600, ring=1):
        degrees = ParallelSettings(ulysses, cfg, ring)
        devices = pool_devices(gpus, degrees.degree, host.compute_device(), host.gpu_count())
        return (PoolSpec(devices, degrees, float(timeout_s)),)


WanCoreParallel.DESCRIPTION += " " + setting_help("parallel")
