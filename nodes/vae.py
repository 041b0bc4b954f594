"""VAE nodes: LATENT (raw) <-> IMAGE frames, with optional spatial tiling for large frames."""

from __future__ import annotations

from ..wan_core import TILINGS, decode_latent, encode_video, images_to_video, video_to_images
from . import host

_TILING_TIP = ("Decode in spatial tiles to bound memory: 'auto' tiles only when the frames would not fit the free "
               "memory; a number is the tile size in pixels (64 pixels overlap, blended without seams). Tiling is "
               "slower and very slightly different at tile borders.")


class WanCoreVAEDecode:
    DESCRIPTION = "Decodes a Wan2.1 LATENT (raw, also from ComfyUI's native Wan nodes) into IMAGE frames."
    CATEGORY = "WanCore/vae"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("WANCORE_VAE", {"tooltip": "From WanCoreVAELoader."}),
            "latent": ("LATENT", {"tooltip": "Raw Wan2.1 latents [B, 16, F', H/8, W/8]."}),
            "tiling": (list(TILINGS), {"default": "auto", "tooltip": _TILING_TIP}),
        }}

    def decode(self, vae, latent, tiling):
        return (video_to_images(decode_latent(vae, latent["samples"], host.HOST, tiling)).cpu(),)


class WanCoreVAEEncode:
    DESCRIPTION = ("Encodes IMAGE frames (4n+1 of them, sides multiples of 16) into a raw Wan2.1 LATENT, e.g. "
                   "for video-to-video with WanCoreSampler's denoise below 1.")
    CATEGORY = "WanCore/vae"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("WANCORE_VAE", {"tooltip": "From WanCoreVAELoader."}),
            "images": ("IMAGE", {"tooltip": "4n+1 frames; resize or crop to multiples of 16 first."}),
            "tiling": (list(TILINGS), {"default": "auto", "tooltip": _TILING_TIP}),
        }}

    def encode(self, vae, images, tiling):
        return ({"samples": encode_video(vae, images_to_video(images), host.HOST, tiling).cpu()},)
