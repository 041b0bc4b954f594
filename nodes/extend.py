"""WanCoreExtend: a LATENT continued in latent space (long videos without a decode between segments)."""

from __future__ import annotations

from ..wan_core import Extension, RenderSettings, extend, manifest_versions
from ..wan_core import setting_help as tip
from . import host
from .sampler import sampling_inputs


class WanCoreExtend:
    DESCRIPTION = ("Continues a LATENT to more frames without decoding it: each new segment is rendered from the "
                   "last overlap frames of the video so far (t2v: held fixed; i2v: as the start image is, so "
                   "connect the clip's image_embeds; VACE: the extend recipe, so connect the clip's vace) and "
                   "appended; the clip's own frames are kept as they are. Decode once at the end: no colour drift "
                   "from repeated VAE round trips. Chain several with their own prompts for prompt travel.")
    CATEGORY = "WanCore/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("WANCORE_MODEL", {"tooltip": "The model that rendered the clip (or a pair)."}),
            "embeds": ("WANCORE_TEXT_EMBEDS", {"tooltip": "The prompt of the new segments."}),
            "latent": ("LATENT", {"tooltip": "The clip to continue (a sampler's or an earlier Extend's output)."}),
            "frames": ("INT", {"default": 161, "min": 5, "max": 4097, "step": 4, "tooltip": "Frames of the whole "
                               "video after extending, 4n+1 (321 = 20 s at 16 fps)."}),
            "overlap": ("INT", {"default": 16, "min": 4, "max": 200, "step": 4, "tooltip": "Frames each new "
                                "segment carries from the end of the video before it (a multiple of 4): more "
                                "keeps motion steadier, fewer adds more per segment."}),
            "segment_frames": ("INT", {"default": 81, "min": 9, "max": 1025, "step": 4, "tooltip": "Frames per "
                                       "segment, carried ones included, 4n+1 (81: the models' own length)."}),
            **sampling_inputs(" Segment n draws seed + n."),
        }, "optional": {
            "image_embeds": ("WANCORE_IMAGE_EMBEDS", {"tooltip": "i2v models: the image conditioning the clip was "
                             "rendered with (its CLIP features and blank-frame latents are reused)."}),
            "vace": ("WANCORE_VACE_EMBEDS", {"tooltip": "VACE models: the clip's VACE conditioning (its blank-frame "
                     "latents are reused)."}),
            "cache": ("WANCORE_CACHE", {"tooltip": "A step cache from WanCoreCache. " + tip("cache")}),
            "context": ("WANCORE_CONTEXT", {"tooltip": "From Wan Context Windows, for segments longer than the "
                        "model's 81 frames. " + tip("context")}),
            "resume": (["auto", "off"], {"default": "auto", "tooltip": tip("resume")}),
        }}

    def run(self, model, embeds, latent, frames, overlap, segment_frames, seed, steps, cfg, shift, sampler,
            image_embeds=None, vace=None, cache=None, context=None, resume="auto"):
        host.render_started()
        settings = RenderSettings(sampler=sampler, steps=steps, cfg=cfg, shift=shift, seed=seed, cache=cache,
                                  context=context, resume=resume)
        extension = Extension(frames, overlap, segment_frames)
        manifest = {"node": "WanCoreExtend", "settings": settings.to_manifest(), "versions": manifest_versions()}
        joined = extend(model, embeds, latent["samples"], extension, settings, host.HOST, image_embeds, vace,
                        manifest)
        return ({"samples": joined},)
