"""WanCoreSampler: text (and optionally image / video) conditioning -> LATENT (raw, ComfyUI's convention).

Inputs -> :class:`RenderSettings` -> :class:`RenderJob` on the node host -> LATENT; the render itself (checks,
memory plan, placement, cache, compile, resume, progress) is the engine's one render path."""

from __future__ import annotations

from ..wan_core import (
    SAMPLERS,
    RenderJob,
    RenderSettings,
    SampleRequest,
    SolverState,
    attention_backends,
    manifest_versions,
)
from ..wan_core import setting_help as tip
from . import host

STATE_KEY = "wancore_solver_state"
"""The LATENT entry of a sampler stopped with stop_after: its solver state, for a sampler that starts there."""

_FROM_CONDITIONING = ("Greyed out and not used while image_embeds, vace or latent is connected: the size set "
                      "there renders.")


def sampling_inputs(seed_note: str = "") -> dict:
    """The sampling widgets (seed, steps, cfg, shift, sampler) of the nodes that render, in this order."""
    return {
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True,
                         "tooltip": tip("seed") + seed_note}),
        "steps": ("INT", {"default": 50, "min": 1, "max": 200, "tooltip": tip("steps")}),
        "cfg": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0, "step": 0.1, "tooltip": tip("cfg")}),
        "shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 30.0, "step": 0.1, "tooltip": tip("shift")}),
        "sampler": (list(SAMPLERS), {"default": "unipc", "tooltip": tip("sampler")}),
    }


class WanCoreSampler:
    DESCRIPTION = ("Denoises a Wan2.1 video latent from seeded noise (text-to-video), or part-way from a LATENT "
                   "(video-to-video, denoise < 1). The same seed gives the same video on any device. Outputs raw "
                   "latents that ComfyUI's native Wan VAE nodes can decode too.")
    CATEGORY = "WanCore/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("WANCORE_MODEL", {"tooltip": "From WanCoreModelLoader, or Wan Expert Pair (Wan2.2 A14B: the "
                      "two experts, each for its steps, with their own cfg)."}),
            "embeds": ("WANCORE_TEXT_EMBEDS", {"tooltip": "From WanCoreTextEncode."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 2048, "step": 16, "tooltip": "Pixels, a multiple "
                              "of 16. 832x480 (or 1280x720 for 14B) as trained. " + _FROM_CONDITIONING}),
            "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16,
                               "tooltip": "Pixels, a multiple of 16. " + _FROM_CONDITIONING}),
            "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4, "tooltip": "4n+1 frames (81 = 5 s "
                               "at 16 fps). Time and memory grow with it. " + _FROM_CONDITIONING}),
            **sampling_inputs(),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": tip("denoise")}),
        }, "optional": {
            "latent": ("LATENT", {"tooltip": "Start latent for video-to-video; its size is rendered (this node's "
                                  "width, height and frames are greyed out)."}),
            "image_embeds": ("WANCORE_IMAGE_EMBEDS", {"tooltip": "Image conditioning for i2v / flf2v models; "
                             "its size and frame count are rendered (this node's are greyed out)."}),
            "vace": ("WANCORE_VACE_EMBEDS", {"tooltip": "VACE conditioning (WanCoreVACEConditioning) for VACE "
                     "models; its size and frame count are rendered (this node's are greyed out)."}),
            "resume": (["auto", "off"], {"default": "auto", "tooltip": tip("resume") + " Kept in "
                                         "output/wancore_resume/, one file per render."}),
            "stop_after": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": tip("stop_after")}),
            "attention": (attention_backends(), {"default": "sdpa", "tooltip": tip("attention")}),
            "compile": ("BOOLEAN", {"default": False, "tooltip": tip("compile")}),
            "vram_budget_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5,
                                         "tooltip": tip("vram_budget")}),
            "cache": ("WANCORE_CACHE", {"tooltip": "A step cache from WanCoreCache. " + tip("cache")}),
            "start_step": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": tip("start_step")}),
            "context": ("WANCORE_CONTEXT", {"tooltip": "From Wan Context Windows. " + tip("context")}),
            "parallel": ("WANCORE_PARALLEL", {"tooltip": "From Wan Parallel: this render on several GPUs."}),
        }}

    def run(self, model, embeds, width, height, frames, seed, steps, cfg, shift, sampler, denoise,
            latent=None, image_embeds=None, vace=None, resume="auto", stop_after=0, attention="sdpa",
            compile=False, cache=None, vram_budget_gb=0.0, start_step=0, context=None, parallel=None):
        host.render_started()
        settings = RenderSettings(sampler=sampler, steps=steps, cfg=cfg, shift=shift, seed=seed, denoise=denoise,
                                  stop_after=stop_after, cache=cache, attention=attention, compile=compile,
                                  vram_budget=vram_budget_gb, resume=resume, start_step=start_step,
                                  context=context, parallel=None if parallel is None else parallel.settings)
        manifest = {"node": "WanCoreSampler", "settings": settings.to_manifest(), "versions": manifest_versions()}
        state = latent.get(STATE_KEY) if latent is not None and start_step else None
        job = RenderJob(model, embeds, settings, SampleRequest(width, height, frames),
                        None if latent is None else latent["samples"], image_embeds, vace, manifest, state)
        kept: list[SolverState] = []
        if parallel is None:
            out = {"samples": job.run(host.HOST, on_stop=kept.append)}
        else:
            out = {"samples": host.render_parallel_job(job, parallel, on_stop=kept.append)}
        if kept:  # stopped: a sampler started at this step from this LATENT goes on exactly
            out[STATE_KEY] = kept[0]
        return (out,)
