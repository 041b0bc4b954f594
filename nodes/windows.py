"""WanCoreContextWindows: context-window settings, for the sampler's context input (long videos)."""

from __future__ import annotations

from ..wan_core import FUSE_METHODS, SCHEDULES, ContextWindows


class WanCoreContextWindows:
    DESCRIPTION = ("Context windows for videos longer than the model's 81 frames: at every step the latent is "
                   "denoised as overlapping windows of context_frames, each its own model call with its share of "
                   "the image / VACE conditioning, blended where they overlap. Memory grows with the window, not "
                   "with the video. The same schedules and fuse methods as ComfyUI's WAN Context Windows node "
                   "(frames in pixel frames, 4n+1). Connect it to WanCoreSampler's context input.")
    CATEGORY = "WanCore/sampling"
    RETURN_TYPES = ("WANCORE_CONTEXT",)
    RETURN_NAMES = ("context",)
    FUNCTION = "settings"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "context_frames": ("INT", {"default": 81, "min": 5, "max": 1025, "step": 4, "tooltip": "Frames per "
                               "window, 4n+1 (81: the models' own length; a step cache needs the static schedule)."}),
            "context_overlap": ("INT", {"default": 30, "min": 0, "max": 1024, "tooltip": "Frames shared by "
                                "neighbouring windows: more blends more smoothly and costs more windows."}),
            "schedule": (list(SCHEDULES), {"default": "static", "tooltip": "static: the same windows every step, "
                         "the last flush with the end. uniform: windows shifting from step to step (seams move, "
                         "so they fade). looped: shifting windows that wrap around the end, for loops."}),
            "fuse": (list(FUSE_METHODS), {"default": "pyramid", "tooltip": "How overlapping windows blend: "
                     "pyramid (their middles count most), overlap-linear (a linear cross-fade over the overlap), "
                     "flat (a plain average)."}),
        }, "optional": {
            "stride": ("INT", {"default": 1, "min": 1, "max": 8, "tooltip": "uniform / looped: also windows over "
                       "every 2nd, 4th, ... frame, up to this step (1: contiguous windows only)."}),
            "closed_loop": ("BOOLEAN", {"default": False, "tooltip": "looped: windows also join the end to the "
                            "start (a video that loops)."}),
        }}

    def settings(self, context_frames, context_overlap, schedule, fuse, stride=1, closed_loop=False):
        return (ContextWindows(context_frames, context_overlap, schedule, fuse, stride, closed_loop),)
