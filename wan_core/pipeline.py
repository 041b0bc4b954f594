"""Whole-task functions on top of the pieces: text-to-video, and the live preview of a latent.

Used by the CLI and by the nodes (which call the pieces one stage per node).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .constants import NEGATIVE_PROMPT, VAE_STRIDE
from .dit import WanDiT
from .errors import InputError
from .sampling import SampleRequest, sample
from .text_encoder_loading import TextEncoder
from .vae import WanVAE

log = logging.getLogger(__name__)

# Wan2.1 latent -> RGB linear map (per-channel weights and bias) for quick previews of
# normalized latents: a widely used approximation (ComfyUI's Wan21 latent format publishes it).
PREVIEW_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
PREVIEW_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


@dataclass(frozen=True)
class TextEmbeds:
    """Encoded prompts for the sampler: ``[B, 512, dim]`` each (zeros after each prompt)."""

    positive: torch.Tensor
    negative: torch.Tensor


@dataclass(frozen=True)
class ImageEmbeds:
    """Image conditioning of an i2v / flf2v DiT: CLIP tokens ``[B, 257 or 514, 1280]`` and
    ``y = [B, 4 mask + 16 latent channels, F', h, w]``."""

    clip_fea: torch.Tensor
    y: torch.Tensor

    def request(self) -> SampleRequest:
        """The render size ``y`` was built for (the sampler must use exactly this)."""
        _, _, latent_frames, lat_h, lat_w = self.y.shape
        return SampleRequest(width=lat_w * VAE_STRIDE[2], height=lat_h * VAE_STRIDE[1],
                             frames=(latent_frames - 1) * VAE_STRIDE[0] + 1)


def encode_prompts(text_encoder: TextEncoder, positive: str, negative: str | None = None) -> TextEmbeds:
    """Encode a prompt and its negative (the official negative prompt when None or empty)."""
    if not isinstance(positive, str):
        raise InputError(f"the prompt must be text, got {type(positive).__name__}")
    states = text_encoder.encode([positive, negative or NEGATIVE_PROMPT])
    return TextEmbeds(states[:1].cpu(), states[1:].cpu())


def latent_preview(x0: torch.Tensor) -> torch.Tensor:
    """Normalized latents ``[B, 16, F', h, w]`` -> uint8 RGB ``[h, w, 3]`` of the last latent frame of item 0."""
    factors = torch.tensor(PREVIEW_RGB_FACTORS, dtype=torch.float32, device=x0.device)
    bias = torch.tensor(PREVIEW_RGB_BIAS, dtype=torch.float32, device=x0.device)
    rgb = x0[0, :, -1].float().permute(1, 2, 0) @ factors + bias  # [h, w, 3] in about [-1, 1]
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def text_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, prompt: str, negative: str | None = None,
                  *, width: int = 832, height: int = 480, frames: int = 81, seed: int = 0, steps: int = 50,
                  cfg: float = 5.0, shift: float = 5.0, sampler: str = "unipc",
                  callback: Callable[[int, int, torch.Tensor], None] | None = None,
                  interrupt: Callable[[], bool] | None = None) -> torch.Tensor:
    """Prompt -> video ``[1, 3, frames, height, width]`` in [-1, 1]. Sizes are checked before any work."""
    request = SampleRequest(width, height, frames)
    request.latent_shape()  # validates width, height and frame count now
    embeds = encode_prompts(text_encoder, prompt, negative)
    raw = sample(dit, embeds.positive, embeds.negative, request=request, seed=seed, steps=steps, cfg=cfg,
                 shift=shift, sampler=sampler, callback=callback, interrupt=interrupt)
    return vae.decode(raw)


def image_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, clip, start: torch.Tensor, prompt: str,
                   negative: str | None = None, *, end: torch.Tensor | None = None, width: int = 832,
                   height: int = 480, frames: int = 81, seed: int = 0, steps: int = 40, cfg: float = 5.0,
                   shift: float = 3.0, sampler: str = "unipc",
                   callback: Callable[[int, int, torch.Tensor], None] | None = None,
                   interrupt: Callable[[], bool] | None = None) -> torch.Tensor:
    """Start image (and, for flf2v, end image) -> video ``[1, 3, frames, height, width]`` in [-1, 1].

    start / end: ComfyUI IMAGE ``[1, H, W, 3]`` in 0..1. Defaults follow the official i2v (40 steps,
    shift 3.0 at 480p; use shift 5.0 at 720p and 16 for flf2v). Model kind and conditioning are
    checked before any work.
    """
    from .i2v import image_conditioning

    request = SampleRequest(width, height, frames)
    request.latent_shape()
    if dit.config.model_type == "t2v":
        raise InputError("this is a text-to-video model; load an i2v (or flf2v) checkpoint to animate an image")
    if (end is not None) != (dit.config.model_type == "flf2v"):
        raise InputError(f"an {dit.config.model_type} model needs "
                         f"{'a start and an end image' if dit.config.model_type == 'flf2v' else 'one start image'}")
    embeds = encode_prompts(text_encoder, prompt, negative)
    image = image_conditioning(vae, clip, start, width, height, frames, end=end)
    raw = sample(dit, embeds.positive, embeds.negative, request=request, seed=seed, steps=steps, cfg=cfg,
                 shift=shift, sampler=sampler, clip_fea=image.clip_fea, y=image.y, callback=callback,
                 interrupt=interrupt)
    return vae.decode(raw)
