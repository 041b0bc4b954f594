"""What a render is conditioned on: the encoded prompts and (i2v / flf2v) the image embeds.

The types the sampler takes (:class:`TextEmbeds`, :class:`ImageEmbeds`) and
:func:`encode_prompts`; the image conditioning itself is built in :mod:`wan_core.i2v`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .constants import NEGATIVE_PROMPT, VAE_STRIDE, video_frames
from .errors import InputError
from .models.text_encoder import TextEncoder
from .sampling.request import SampleRequest


@dataclass(frozen=True)
class TextEmbeds:
    """Encoded prompts for the sampler: ``[B, 512, dim]`` each (zeros after each prompt)."""

    positive: torch.Tensor
    negative: torch.Tensor


@dataclass(frozen=True)
class ImageEmbeds:
    """Image conditioning of an i2v / flf2v DiT: CLIP tokens ``[B, 257 or 514, 1280]`` (None for the Wan2.2
    image-to-video experts, which have no CLIP branch) and ``y = [B, 4 mask + 16 latent channels, F', h, w]``; of
    the TI2V-5B model: the image's latents as the first latent frame (``first_frame``) at ``size``."""

    clip_fea: torch.Tensor | None
    y: torch.Tensor | None
    first_frame: torch.Tensor | None = None  # TI2V-5B: RAW [B, 48, 1, h, w] image latents (no clip_fea, no y)
    size: SampleRequest | None = None  # TI2V-5B: the render size the image was encoded for

    def request(self) -> SampleRequest:
        """The render size ``y`` (or the TI2V image) was built for (the sampler must use exactly this)."""
        if self.y is None:
            return self.size
        _, _, latent_count, lat_h, lat_w = self.y.shape
        return SampleRequest(width=lat_w * VAE_STRIDE[2], height=lat_h * VAE_STRIDE[1],
                             frames=video_frames(latent_count))


def encode_prompts(text_encoder: TextEncoder, positive: str, negative: str | None = None,
                   interrupt: Callable[[], bool] | None = None, plan=None, device=None) -> TextEmbeds:
    """Encode a prompt and its negative (the official negative prompt when None or empty); ``plan`` / ``device``:
    layers streamed to ``device`` (see :meth:`TextEncoder.encode`)."""
    if not isinstance(positive, str):
        raise InputError(f"the prompt must be text, got {type(positive).__name__}")
    states = text_encoder.encode([positive, negative or NEGATIVE_PROMPT], interrupt=interrupt, plan=plan,
                                 device=device)
    return TextEmbeds(states[:1].cpu(), states[1:].cpu())
