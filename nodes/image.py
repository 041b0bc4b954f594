"""Image-to-video nodes: the CLIP vision loader and the image conditioning for i2v / flf2v models."""

from __future__ import annotations

from ..wan_core import image_conditioning, load_clip_vision, size_for_area, ti2v_size
from . import host
from .loaders import placement


class WanCoreCLIPVisionLoader:
    DESCRIPTION = ("Loads the CLIP ViT-H/14 image encoder Wan2.1 i2v / flf2v models condition on "
                   "(clip_vision_h.safetensors, or the official open-clip .pth) from models/clip_vision.")
    CATEGORY = "WanCore/loaders"
    RETURN_TYPES = ("WANCORE_CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_name": (host.list_models("clip_vision"), {"tooltip": "CLIP vision file in models/clip_vision."}),
        }}

    def load(self, clip_name):
        return (load_clip_vision(host.model_path("clip_vision", clip_name), **placement("clip_vision")),)


class WanCoreImageToVideo:
    DESCRIPTION = ("Builds the image conditioning of an i2v model from a start image, or of an flf2v model from a "
                   "start and an end image: CLIP tokens (Wan2.1; the Wan2.2 i2v experts take none) plus the VAE "
                   "latents of the known frames and their mask. "
                   "Connect it to WanCoreSampler's image_embeds; the sampler then renders at the size set here.")
    CATEGORY = "WanCore/conditioning"
    RETURN_TYPES = ("WANCORE_IMAGE_EMBEDS",)
    RETURN_NAMES = ("image_embeds",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("WANCORE_VAE", {"tooltip": "From WanCoreVAELoader: encodes the known frames."}),
            "start_image": ("IMAGE", {"tooltip": "The first frame (the first image of a batch is used)."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 2048, "step": 16,
                              "tooltip": "Output width (x16); with keep_aspect, width x height is the pixel area."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16, "tooltip": "Output height (x16)."}),
            "frames": ("INT", {"default": 81, "min": 5, "max": 1025, "step": 4, "tooltip": "4n+1 frames."}),
            "keep_aspect": ("BOOLEAN", {"default": True, "tooltip": "Follow the start image's aspect ratio at about "
                                        "width x height pixels, as the official pipeline does (sides x16); off: "
                                        "exactly width x height, stretching the image."}),
        }, "optional": {
            "clip_vision": ("WANCORE_CLIP_VISION", {"tooltip": "From WanCoreCLIPVisionLoader: the Wan2.1 i2v / flf2v "
                            "models need it; the Wan2.2 image-to-video experts have no CLIP branch (leave it off)."}),
            "end_image": ("IMAGE", {"tooltip": "The last frame, for first-last-frame (flf2v) models only."}),
        }}

    def build(self, vae, start_image, width, height, frames, keep_aspect, clip_vision=None, end_image=None):
        if keep_aspect:  # the official rule of the model family the VAE belongs to (TI2V-5B: Wan2.2 VAE)
            rule = ti2v_size if vae.stride[1] == 16 else size_for_area
            height, width = rule(start_image.shape[1], start_image.shape[2], width * height)
        with host.on_compute_device(*(m for m in (clip_vision, vae) if m is not None)):
            embeds = image_conditioning(vae, clip_vision, start_image, width, height, frames, end=end_image)
        return (embeds,)
