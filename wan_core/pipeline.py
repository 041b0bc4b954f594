"""Whole-task functions on top of the pieces: text-to-video and image-to-video.

Used by the CLI and by scripts; the nodes call the same pieces one stage per node.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .conditioning import encode_prompts
from .errors import InputError
from .i2v import image_conditioning
from .models.dit import WanDiT
from .models.text_encoder import TextEncoder
from .models.vae import WanVAE
from .runtime.context import RenderContext
from .sampling.loop import SampleRequest, sample

StepCallback = Callable[[int, int, torch.Tensor], None]


def text_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, prompt: str, negative: str | None = None,
                  *, width: int = 832, height: int = 480, frames: int = 81, seed: int = 0, steps: int = 50,
                  cfg: float = 5.0, shift: float = 5.0, sampler: str = "unipc", render: RenderContext | None = None,
                  callback: StepCallback | None = None, interrupt: Callable[[], bool] | None = None) -> torch.Tensor:
    """Prompt -> video ``[1, 3, frames, height, width]`` in [-1, 1]. Sizes are checked before any work."""
    request = SampleRequest(width, height, frames)
    request.latent_shape()  # validates width, height and frame count now
    embeds = encode_prompts(text_encoder, prompt, negative)
    raw = sample(dit, embeds.positive, embeds.negative, request=request, seed=seed, steps=steps, cfg=cfg,
                 shift=shift, sampler=sampler, render=render, callback=callback, interrupt=interrupt)
    return vae.decode(raw)


def image_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, clip, start: torch.Tensor, prompt: str,
                   negative: str | None = None, *, end: torch.Tensor | None = None, width: int = 832,
                   height: int = 480, frames: int = 81, seed: int = 0, steps: int = 40, cfg: float = 5.0,
                   shift: float = 3.0, sampler: str = "unipc", render: RenderContext | None = None,
                   callback: StepCallback | None = None, interrupt: Callable[[], bool] | None = None) -> torch.Tensor:
    """Start image (and, for flf2v, end image) -> video ``[1, 3, frames, height, width]`` in [-1, 1].

    start / end: ComfyUI IMAGE ``[1, H, W, 3]`` in 0..1. Defaults follow the official i2v (40 steps,
    shift 3.0 at 480p; use shift 5.0 at 720p and 16 for flf2v). Model kind and conditioning are
    checked before any work.
    """
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
                 shift=shift, sampler=sampler, clip_fea=image.clip_fea, y=image.y, render=render,
                 callback=callback, interrupt=interrupt)
    return vae.decode(raw)
