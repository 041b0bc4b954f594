"""VAE nodes: LATENT (raw) <-> IMAGE frames, with optional spatial tiling for large frames."""

from __future__ import annotations

from ..wan_core import (
    VAE_STRIDE,
    InputError,
    decode_bytes,
    decode_tiled,
    decode_with_fallback,
    encode_tiled,
    images_to_video,
    tile_for_budget,
    video_to_images,
)
from . import host

TILINGS = ["auto", "off", "256", "384", "512", "768"]
OVERLAP = 8  # latent cells (64 pixels) shared by neighbouring tiles
_TILING_TIP = ("Decode in spatial tiles to bound memory: 'auto' tiles only when the frames would not fit the free "
               "memory; a number is the tile size in pixels (64 pixels overlap, blended without seams). Tiling is "
               "slower and very slightly different at tile borders.")


def _tile(vae, tiling: str, latent_h: int, latent_w: int) -> int | None:
    """Tile size in latent cells, or None for one piece."""
    if tiling == "off":
        return None
    if tiling == "auto":
        device = host.compute_device()
        # inside ComfyUI, models it holds (a diffusion model done sampling) are unloaded as far as one piece needs
        host.make_room(device, int(decode_bytes(vae, latent_h, latent_w, vae.compute_dtype) / 0.8))
        return tile_for_budget(vae, int(host.free_memory(device) * 0.8), latent_h, latent_w, vae.compute_dtype,
                               OVERLAP)
    if tiling not in TILINGS:
        raise InputError(f"tiling {tiling!r} is not one of {', '.join(TILINGS)}")
    return int(tiling) // VAE_STRIDE[1]


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
            "tiling": (TILINGS, {"default": "auto", "tooltip": _TILING_TIP}),
        }}

    def decode(self, vae, latent, tiling):
        z = latent["samples"]
        with host.cancellable() as interrupt, host.on_compute_device(vae):
            tile = _tile(vae, tiling, z.shape[-2], z.shape[-1])
            video = (decode_with_fallback(vae, z, interrupt=interrupt) if tile is None
                     else decode_tiled(vae, z, tile, min(OVERLAP, tile // 2), interrupt=interrupt))
        return (video_to_images(video).cpu(),)


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
            "tiling": (TILINGS, {"default": "auto", "tooltip": _TILING_TIP}),
        }}

    def encode(self, vae, images, tiling):
        video = images_to_video(images)
        with host.cancellable() as interrupt, host.on_compute_device(vae):
            tile = _tile(vae, tiling, video.shape[-2] // VAE_STRIDE[1], video.shape[-1] // VAE_STRIDE[2])
            z = (vae.encode(video, interrupt=interrupt) if tile is None
                 else encode_tiled(vae, video, tile, min(OVERLAP, tile // 2), interrupt=interrupt))
        return ({"samples": z.cpu()},)
