"""VACE conditioning: control frames, masks and reference images into the context a VACE DiT reads.

As the official ``vace`` pipeline builds it (and diffusers' ``WanVACEPipeline``):

- frames ``V`` in [-1, 1] (gray, 0, where no control is given) and a mask ``M`` (1 = generate; ones when
  none is given). With ``m = M > 0.5``: inactive = V (1 - m) (pixels to keep), reactive = V m (pixels to
  regenerate, the control signal); each is VAE-encoded and normalized, and the two are stacked: 32 channels.
- the mask as 64 channels: each 8x8 pixel patch of every frame laid out as channels
  (``[F, h, 8, w, 8] -> [8*8, F, h, w]``), then resampled to the latent frame count by nearest-exact.
- each reference image fitted into the frame (aspect kept, bilinear) and centered on white, encoded as a
  one-frame video, normalized, with 16 zero channels: one latent frame per reference ahead of the video
  (in the given order), with all-zero mask channels there. The sampler denoises those frames too; they are
  removed from its output (:meth:`VaceEmbeds.trim`).

context = [32 latent channels, 64 mask channels]: ``[1, 96, refs + F', H/8, W/8]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .constants import VAE_STRIDE, check_frame_count, check_pixel_size, video_frames
from .errors import InputError
from .i2v import check_image
from .latents import normalize_latents
from .models.vae import WanVAE
from .runtime.finite import check_finite
from .sampling.request import SampleRequest


@dataclass(frozen=True)
class VaceEmbeds:
    """A VACE model's conditioning: ``context [1, 96, references + F', h, w]``, the number of reference
    latent frames at its start, and the strength of the VACE hints."""

    context: torch.Tensor
    references: int = 0
    strength: float = 1.0

    def request(self) -> SampleRequest:
        """The size the sampler renders: the video's frames plus one latent frame per reference image."""
        _, _, latent_count, lat_h, lat_w = self.context.shape
        return SampleRequest(width=lat_w * VAE_STRIDE[2], height=lat_h * VAE_STRIDE[1],
                             frames=video_frames(latent_count))

    def trim(self, raw: torch.Tensor) -> torch.Tensor:
        """The sampler's latents without the reference frames: ``[B, 16, F', h, w]``."""
        return raw[:, :, self.references:]

    def with_strength(self, strength: float) -> VaceEmbeds:
        return VaceEmbeds(self.context, self.references, float(strength))


def vace_request(width: int, height: int, frames: int, references: int = 0) -> SampleRequest:
    """The size a VACE render samples at before its conditioning exists: one latent frame (4 video frames) more
    per reference image."""
    return SampleRequest(width, height, frames + VAE_STRIDE[0] * references)


def _frames_in(name: str, images: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """IMAGE ``[N, H, W, 3]`` in 0..1 -> ``[1, 3, frames, height, width]`` in [-1, 1], resized (bilinear) when
    its size differs; a clip shorter than ``frames`` is continued with gray frames."""
    check_image(name, images)
    if images.shape[0] > frames:
        raise InputError(f"the {name} has {images.shape[0]} frames, more than the {frames} to render; trim it or "
                         "render more frames")
    x = images.float().movedim(-1, 1)  # [N, 3, H, W]
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    x = x * 2 - 1
    gray = x.new_zeros(frames - x.shape[0], 3, height, width)
    return torch.cat([x, gray]).movedim(0, 1).unsqueeze(0)


def _mask_in(mask: torch.Tensor | None, frames: int, height: int, width: int) -> torch.Tensor:
    """MASK ``[N, H, W]`` (or ``[H, W]``) in 0..1, 1 = generate -> ``[frames, height, width]``; none: all ones.
    One mask serves every frame; a shorter batch is continued with ones (generate)."""
    if mask is None:
        return torch.ones(frames, height, width)
    mask = mask.float()
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or min(mask.shape) < 1:
        raise InputError(f"the mask must be a MASK [N, height, width], got shape {tuple(mask.shape)}")
    check_finite("the VACE mask", mask, "a mask is 0 (keep) to 1 (generate) everywhere; fix the node that made it")
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask[:, None], size=(height, width), mode="nearest-exact")[:, 0]
    if mask.shape[0] == 1:
        mask = mask.expand(frames, height, width)
    if mask.shape[0] > frames:
        raise InputError(f"the mask has {mask.shape[0]} frames, more than the {frames} to render")
    return torch.cat([mask, mask.new_ones(frames - mask.shape[0], height, width)]).clamp(0, 1)


def fit_reference(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One IMAGE ``[H, W, 3]`` in 0..1 -> ``[3, height, width]`` in [-1, 1]: scaled to fit (aspect kept,
    bilinear) and centered on white, as the official pipeline places reference images."""
    x = image.float().movedim(-1, 0)[None] * 2 - 1
    scale = min(height / x.shape[-2], width / x.shape[-1])
    new_h, new_w = int(x.shape[-2] * scale), int(x.shape[-1] * scale)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, height, width)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top:top + new_h, left:left + new_w] = x
    return canvas


def mask_channels(mask: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """``[F, H, W]`` -> ``[64, latent_frames, H/8, W/8]``: each 8x8 patch's pixels as channels, frames
    resampled by nearest-exact."""
    frames, height, width = mask.shape
    sy, sx = VAE_STRIDE[1], VAE_STRIDE[2]
    patches = mask.view(frames, height // sy, sy, width // sx, sx).permute(2, 4, 0, 1, 3).flatten(0, 1)
    return F.interpolate(patches[None], size=(latent_frames, height // sy, width // sx), mode="nearest-exact")[0]


def vace_conditioning(vae: WanVAE, width: int, height: int, frames: int, control: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None, references: torch.Tensor | Sequence[torch.Tensor] = (),
                      strength: float = 1.0, interrupt: Callable[[], bool] | None = None) -> VaceEmbeds:
    """The VACE context for a render of ``frames`` at ``width x height`` (see the module docstring).

    control: IMAGE ``[N <= frames, H, W, 3]`` in 0..1 (a control video: depth, pose, edges, or a clip to
    keep parts of); mask: MASK ``[N, H, W]`` in 0..1, 1 = generate; references: IMAGE ``[R, H, W, 3]`` or a
    list of ``[1, H, W, 3]`` images. strength scales the VACE hints (1: as trained).
    """
    check_frame_count(frames)
    check_pixel_size(width, height)
    if not (isinstance(strength, (int, float)) and 0 <= strength <= 10):
        raise InputError(f"VACE strength must be a number from 0 to 10, got {strength!r} (1 is as trained)")
    refs = [r for batch in ([references] if torch.is_tensor(references) else references) for r in batch]
    for r in refs:
        check_image("reference image", r[None])
    video = _frames_in("control video", control, frames, height, width) if control is not None else \
        torch.zeros(1, 3, frames, height, width)
    generate = _mask_in(mask, frames, height, width)
    keep = (generate > 0.5).float()[None, None]  # [1, 1, F, H, W]
    device = vae.conv2.weight.device

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return normalize_latents(vae.encode(pixels.to(device), interrupt=interrupt)).cpu()

    latents = torch.cat([encode(video * (1 - keep)), encode(video * keep)], dim=1)  # inactive, reactive
    masks = mask_channels(generate, latents.shape[2])[None]
    if refs:
        ref_latents = [encode(fit_reference(r, height, width)[None, :, None]) for r in refs]
        ref_latents = torch.cat([torch.cat([z, torch.zeros_like(z)], dim=1) for z in ref_latents], dim=2)
        latents = torch.cat([ref_latents, latents], dim=2)
        masks = torch.cat([masks.new_zeros(1, masks.shape[1], len(refs), *masks.shape[3:]), masks], dim=2)
    return VaceEmbeds(torch.cat([latents, masks], dim=1), len(refs), float(strength))


def extension_source(clip: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip to extend: its frames first, then gray, and the mask that keeps them (0) and generates the
    rest (1). clip IMAGE ``[N, H, W, 3]`` -> (IMAGE ``[frames, H, W, 3]``, MASK ``[frames, H, W]``)."""
    check_image("clip", clip)
    keep = min(clip.shape[0], frames)
    images = torch.full((frames, *clip.shape[1:]), 0.5)
    images[:keep] = clip[:keep].float()
    mask = torch.ones(frames, *clip.shape[1:3])
    mask[:keep] = 0
    return images, mask


def outpaint_source(clip: torch.Tensor, left: int, right: int, top: int, bottom: int) -> tuple[torch.Tensor, ...]:
    """A clip on a larger canvas: gray borders to generate (mask 1), the clip kept (0).
    clip IMAGE ``[N, H, W, 3]`` -> (IMAGE ``[N, H + top + bottom, W + left + right, 3]``, MASK of that size)."""
    check_image("clip", clip)
    if min(left, right, top, bottom) < 0:
        raise InputError(f"outpaint borders must be >= 0 pixels, got {left}, {right}, {top}, {bottom}")
    n, h, w, _ = clip.shape
    images = torch.full((n, h + top + bottom, w + left + right, 3), 0.5)
    images[:, top:top + h, left:left + w] = clip.float()
    mask = torch.ones(n, h + top + bottom, w + left + right)
    mask[:, top:top + h, left:left + w] = 0
    return images, mask
