"""Image conditioning for the Wan2.1 i2v / flf2v DiT, as the official ``image2video.py`` and
``first_last_frame2video.py`` build it.

``y`` = 4 mask channels + 16 VAE-latent channels per latent frame. The mask is 1 where a frame is
given: the video's frames are grouped 4 per latent frame after the first frame, which is repeated
4 times, so latent frame 0 is fully known and (flf2v) the last latent frame's last channel is.
The latents encode the start image followed by black (zero) frames (and the end image last for
flf2v) and are normalized, as the official VAE wrapper returns them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .conditioning import ImageEmbeds
from .constants import PATCH_SIZE, VAE_STRIDE, check_frame_count, check_pixel_size
from .errors import InputError
from .latents import normalize_latents
from .models.clip_vision import ClipVision
from .models.config import TI2V_5B
from .models.vae import WanVAE
from .runtime.finite import check_finite
from .sampling.request import SampleRequest


def size_for_area(height: int, width: int, max_area: int) -> tuple[int, int]:
    """The official resize-to-area rule: the image's aspect ratio at about ``max_area`` pixels,
    each side a multiple of 16 (VAE stride x patch). Returns ``(height, width)``."""
    aspect = height / width
    unit = VAE_STRIDE[1]
    lat_h = round(math.sqrt(max_area * aspect) // unit // PATCH_SIZE[1] * PATCH_SIZE[1])
    lat_w = round(math.sqrt(max_area / aspect) // unit // PATCH_SIZE[2] * PATCH_SIZE[2])
    return lat_h * unit, lat_w * unit


def ti2v_size(height: int, width: int, max_area: int, unit: int = 32) -> tuple[int, int]:
    """The TI2V-5B resize-to-area rule (``wan/utils/utils.py`` ``best_output_size``): sides multiples of ``unit``
    (its VAE's 16 x the DiT's 2) at most ``max_area`` pixels, fitting the width or the height first, whichever keeps
    the aspect ratio better. Returns ``(height, width)``."""
    ratio = width / height
    ideal_w = (max_area * ratio) ** 0.5
    ideal_h = max_area / ideal_w
    w1 = int(ideal_w // unit * unit)
    h1 = int(max_area / w1 // unit * unit)
    h2 = int(ideal_h // unit * unit)
    w2 = int(max_area / h2 // unit * unit)
    off1 = max(ratio / (w1 / h1), (w1 / h1) / ratio)
    off2 = max(ratio / (w2 / h2), (w2 / h2) / ratio)
    return (h1, w1) if off1 < off2 else (h2, w2)


def frame_mask(frames: int, lat_h: int, lat_w: int, last_known: bool) -> torch.Tensor:
    """``[1, 4, F', lat_h, lat_w]``: 1 for the given frames (first, and last when ``last_known``)."""
    known = torch.zeros(frames)
    known[0] = 1
    if last_known:
        known[-1] = 1
    per_frame = torch.cat([known[:1].repeat(VAE_STRIDE[0]), known[1:]])  # [4 F'] the first frame 4 times
    grouped = per_frame.view(-1, VAE_STRIDE[0]).transpose(0, 1)  # [4, F']
    return grouped[None, :, :, None, None].expand(1, VAE_STRIDE[0], -1, lat_h, lat_w).contiguous()


def _to_model_frame(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """IMAGE ``[1, H, W, 3]`` 0..1 -> ``[1, 3, height, width]`` in [-1, 1] (bicubic, as the official)."""
    x = image.float().movedim(-1, 1) * 2 - 1
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)


def _cover_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale ``[1, H, W, 3]`` to cover ``height x width`` and center-crop (the official end-frame fit)."""
    h, w = image.shape[1:3]
    if (h, w) == (height, width):
        return image
    ratio = max(height / h, width / w)
    size = (round(h * ratio), round(w * ratio))
    x = F.interpolate(image.float().movedim(-1, 1), size=size, mode="bicubic", align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[:, :, top:top + height, left:left + width].movedim(1, -1).clamp(0, 1)


def check_image(name: str, image: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``image`` is a finite IMAGE ``[N >= 1, H, W, 3]``."""
    if image.dim() != 4 or image.shape[-1] != 3 or min(image.shape) < 1:
        raise InputError(f"{name} must be an IMAGE [N, height, width, 3], got shape {tuple(image.shape)}; "
                         "convert RGBA or grayscale images to RGB first")
    check_finite(f"the {name}", image, "an image node before this one produced invalid values")


def image_conditioning(vae: WanVAE, clip: ClipVision | None, start: torch.Tensor, width: int, height: int,
                       frames: int, end: torch.Tensor | None = None) -> ImageEmbeds:
    """CLIP tokens and ``y`` for an i2v (``end`` None) or flf2v render of ``frames`` at ``width x height``.

    start / end: ComfyUI IMAGE ``[N, H, W, 3]`` in 0..1 (the first image of the batch is used).
    Returns clip_fea ``[1, 257 or 514, 1280]`` (None when ``clip`` is None: the Wan2.2 image-to-video experts
    have no CLIP branch) and y ``[1, 20, F', height/8, width/8]``.
    """
    check_frame_count(frames)
    check_pixel_size(width, height)
    check_image("start image", start)
    start = start[:1]
    if getattr(vae, "stride", VAE_STRIDE) != VAE_STRIDE:  # the Wan2.2 VAE: the TI2V-5B model's first frame
        return first_frame_conditioning(vae, start, width, height, frames, end)
    if end is not None:
        check_image("end image", end)
        if frames < 2:
            raise InputError("first-last-frame video needs at least 5 frames (4n+1)")
        end = _cover_crop(end[:1], *start.shape[1:3])
    images = start if end is None else torch.cat([start, end])
    clip_fea = None if clip is None else clip.encode(images).reshape(1, -1, clip.config.dim)  # flf2v: start, end
    device = vae.conv2.weight.device
    video = torch.zeros(1, 3, frames, height, width, device=device)
    video[:, :, 0] = _to_model_frame(start, height, width).to(device)
    if end is not None:
        video[:, :, -1] = _to_model_frame(end, height, width).to(device)
    latents = normalize_latents(vae.encode(video.clamp(-1, 1)))
    lat_h, lat_w = height // VAE_STRIDE[1], width // VAE_STRIDE[2]
    mask = frame_mask(frames, lat_h, lat_w, last_known=end is not None).to(latents.device)
    return ImageEmbeds(None if clip_fea is None else clip_fea.cpu(), torch.cat([mask, latents], dim=1).cpu())


def first_frame_conditioning(vae, start: torch.Tensor, width: int, height: int, frames: int,
                             end: torch.Tensor | None = None) -> ImageEmbeds:
    """The TI2V-5B image conditioning: the start image (scaled to cover ``width x height`` and center-cropped, as
    the official ``textimage2video``) encoded by the Wan2.2 VAE as one RAW latent frame ``[1, 48, 1, h, w]``."""
    if end is not None:
        raise InputError("the TI2V-5B model renders from a start image only; leave out the end image")
    request = SampleRequest(width, height, frames)
    request.latent_shape(TI2V_5B)  # width / height multiples of 32, before any work
    frame = _to_model_frame(_cover_crop(start, height, width), height, width)
    latent = vae.encode(frame.clamp(-1, 1).unsqueeze(2).to(vae.conv2.weight.device))
    return ImageEmbeds(None, None, first_frame=latent.cpu(), size=request)
