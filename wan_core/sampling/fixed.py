"""Leading latent frames held fixed through a render: an image's frame (Wan2.2 TI2V-5B image-to-video) or the
frames an extension continues from (:mod:`wan_core.extend`).

Two recipes, by model:

- a TI2V-5B model is trained for clean frames among noisy ones: the known frames are put in as they are, their
  tokens get timestep 0, and they are put back after every step (the official ``textimage2video``);
- other models take one timestep for all tokens, so the known frames are noised to the level the latent is at
  (``(1 - sigma) known + sigma noise``, the render's own seeded noise of those frames) and put back so after
  every step; the last step ends at sigma 0, where they are exactly the known frames.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError
from ..latents import normalize_latents
from ..runtime.finite import check_finite


def check_fixed(config, fixed: torch.Tensor | None, shape: tuple[int, ...], what: str = "first_frame") -> None:
    """RAW leading frames ``[B, C, K, h, w]`` shaped as the first K < F' frames of the render's latent (``what``
    names the argument in the error); a TI2V image's first frame only for a TI2V model."""
    if fixed is None:
        return
    if what == "first_frame" and (config is None or config.model_type != "ti2v"):
        raise InputError("first_frame (an image's latent as the first frame) is for the Wan2.2 TI2V-5B model; "
                         f"this is {'a stand-in model' if config is None else config.label}")
    count = fixed.shape[2] if fixed.dim() == 5 else 0
    c, h, w = shape[1], *shape[3:]
    fits = fixed.dim() == 5 and (fixed.shape[1], *fixed.shape[3:]) == (c, h, w) and fixed.shape[0] in (1, shape[0])
    if what == "first_frame":
        if not fits or count != 1:
            raise InputError(f"first_frame must be [B, {c}, 1, {h}, {w}] (the image encoded by the Wan2.2 VAE at "
                             f"the render's size), got {tuple(fixed.shape)}")
        check_finite("the image's latent (first_frame)", fixed, "encode the image again")
        return
    if not fits or not 0 < count < shape[2]:
        raise InputError(f"{what} must be [B, {c}, K, {h}, {w}] with 0 < K < {shape[2]} (latent frames of the "
                         f"render's size, fewer than it has), got {tuple(fixed.shape)}")
    check_finite(f"the fixed latent frames ({what})", fixed, "give the latent of a finished render")


def hold_fixed(config, fixed: torch.Tensor, noise: torch.Tensor, call: Callable, frames: int
               ) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable]:
    """``(project, call)`` holding RAW ``fixed`` ``[B, C, K, h, w]`` as the latent's first K frames (module
    docstring). noise: the render's normalized starting noise ``[B, C, F', h, w]``; call: the model call, wrapped
    for a TI2V model to give the fixed frames' tokens timestep 0."""
    known = normalize_latents(fixed.float()).to(noise.device).expand(noise.shape[0], -1, -1, -1, -1)
    count = known.shape[2]
    if config is not None and config.model_type == "ti2v":
        return _put_back(known), _fixed_at_zero(call, frames, count)
    noise = noise[:, :, :count]

    def project(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        s = float(sigma)
        x[:, :, :count] = ((1 - s) * known + s * noise).to(x.dtype) if s else known.to(x.dtype)
        return x

    return project, call


def _put_back(known: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``project(x, sigma)``: x with its first frames set to ``known`` (normalized ``[B, C, K, h, w]``)."""
    def project(x: torch.Tensor, _sigma: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, :known.shape[2]] = known.to(x.dtype)
        return x
    return project


def _fixed_at_zero(model, frames: int, count: int) -> Callable:
    """``model`` called with one timestep per latent frame: 0 for the first ``count`` (known), t for the rest."""
    def call(x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        scale = torch.ones(frames, dtype=t.dtype, device=t.device)
        scale[:count] = 0
        return model(x, t.reshape(-1, 1) * scale, *args, **kwargs)
    return call
