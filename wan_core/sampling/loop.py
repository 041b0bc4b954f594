"""``sample``: the denoising loop of every Wan2.1 render (noise, CFG, solver, callbacks).

The solvers themselves (one step rule each) are in :mod:`.solvers`; this module draws the noise,
builds the schedule and the CFG denoiser, and runs the chosen solver under a render context.

Takes and returns RAW VAE latents (ComfyUI's LATENT convention); normalization happens inside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..constants import LATENT_CHANNELS, VAE_STRIDE, check_frame_count, check_pixel_size, latent_frames
from ..errors import InputError, RenderInterrupted
from ..latents import denormalize_latents, normalize_latents
from ..runtime.context import RenderContext
from .schedules import UNIPC_SIGMA_MAX, Schedule, flow_schedule
from .solvers import Denoise, dpmpp_2m, euler, unipc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerSpec:
    """A solver and where its schedule starts (the official UniPC starts at sigma 0.999)."""

    solve: Callable[..., torch.Tensor]
    sigma_max: float


SAMPLERS: dict[str, SamplerSpec] = {
    "unipc": SamplerSpec(unipc, UNIPC_SIGMA_MAX),
    "dpm++": SamplerSpec(dpmpp_2m, 1.0),
    "euler": SamplerSpec(euler, 1.0),
}


def make_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 standard normal noise from a CPU generator seeded with ``seed`` (same on any device)."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def cfg_denoiser(model: Callable[..., torch.Tensor], context: torch.Tensor, negative: torch.Tensor | None,
                 scale: float, **conditioning) -> Denoise:
    """``denoise(x, t)`` = uncond + scale (cond - uncond); both halves run as one batch of 2B.

    context / negative: ``[B, L, 4096]`` text states; with ``scale == 1`` or no negative, the
    unconditional pass is skipped. ``conditioning`` (clip_fea, y, render) goes to both halves
    (tensors doubled, anything else passed as it is).
    """
    if negative is None or scale == 1.0:
        return lambda x, t: model(x, t.expand(x.shape[0]), context, **conditioning).float()
    length = max(context.shape[1], negative.shape[1])
    pad = lambda c: torch.nn.functional.pad(c, (0, 0, 0, length - c.shape[1]))  # noqa: E731
    both = torch.cat([pad(context), pad(negative)])
    doubled = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in conditioning.items()
               if v is not None}

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), t.expand(2 * x.shape[0]), both, **doubled).float()
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return denoise


def build_schedule(sampler: str, steps: int, shift: float, denoise: float) -> Schedule:
    """The schedule for ``steps`` steps; with ``denoise < 1`` the last ``steps`` of ``round(steps / denoise)``."""
    if sampler not in SAMPLERS:
        raise InputError(f"sampler {sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1], got {denoise!r}; 1.0 renders from pure noise")
    total = max(steps, int(round(steps / denoise)))
    return flow_schedule(total, shift, SAMPLERS[sampler].sigma_max).tail(steps)


@dataclass(frozen=True)
class SampleRequest:
    """What to render: latent shape from width/height/frames, or from a start latent (video-to-video)."""

    width: int = 832
    height: int = 480
    frames: int = 81
    batch: int = 1

    def latent_shape(self) -> tuple[int, ...]:
        check_frame_count(self.frames)
        check_pixel_size(self.width, self.height)
        return (self.batch, LATENT_CHANNELS, latent_frames(self.frames),
                self.height // VAE_STRIDE[1], self.width // VAE_STRIDE[2])


def sample(model, context: torch.Tensor, negative: torch.Tensor | None = None, *, request: SampleRequest = None,
           latent: torch.Tensor | None = None, seed: int = 0, steps: int = 50, cfg: float = 5.0, shift: float = 5.0,
           sampler: str = "unipc", denoise: float = 1.0, clip_fea: torch.Tensor | None = None,
           y: torch.Tensor | None = None, render: RenderContext | None = None,
           callback: Callable[[int, int, torch.Tensor], None] | None = None,
           interrupt: Callable[[], bool] | None = None) -> torch.Tensor:
    """Denoise from seeded noise (or part-way from ``latent``) and return RAW latents.

    model: a :class:`~wan_core.models.dit.WanDiT` (or any callable with its signature, ``render`` included).
    render: this render's context (device, compute dtype, attention, block runner, weight patches);
    None: the defaults (compute where the model's weights are). The model itself is never changed.
    context / negative: ``[B, L<=512, 4096]`` text states. latent: RAW ``[B, 16, F', H/8, W/8]``
    start latents (video-to-video; required when ``denoise < 1``, and its shape wins over
    ``request``). callback(step, total, x0_pred) runs after each step; ``interrupt()`` returning
    True stops the render between steps with :class:`RenderInterrupted`.
    Returns RAW latents ``[B, 16, F', H/8, W/8]`` float32.
    """
    schedule = build_schedule(sampler, steps, shift, denoise)
    if latent is None and denoise < 1.0:
        raise InputError(f"denoise {denoise} < 1 needs a start latent (connect a LATENT from VAE encode)")
    shape = tuple(latent.shape) if latent is not None else (request or SampleRequest()).latent_shape()
    if len(shape) != 5 or shape[1] != LATENT_CHANNELS:
        raise InputError(f"latent must be [B, {LATENT_CHANNELS}, F', H/8, W/8], got {shape}")
    if hasattr(model, "check_conditioning"):  # a WanDiT: wrong kind of conditioning fails before any work
        model.check_conditioning(context, clip_fea, y)
    if context.shape[0] == 1 and shape[0] > 1:  # one prompt for a batch of start latents
        context = context.expand(shape[0], -1, -1)
        negative = None if negative is None else negative.expand(shape[0], -1, -1)
    if context.shape[0] != shape[0]:
        raise InputError(f"{context.shape[0]} prompt(s) for a batch of {shape[0]} latents; use one prompt or "
                         "one per latent")
    render = render or RenderContext()
    device = render.device_for(model) if isinstance(model, torch.nn.Module) else render.device or context.device
    x = make_noise(shape, seed).to(device)
    if latent is not None and denoise < 1.0:
        s0 = schedule.sigmas[0].item()
        x = (1 - s0) * normalize_latents(latent.float().to(device)) + s0 * x
    moved = {k: None if v is None else v.to(device) for k, v in (("clip_fea", clip_fea), ("y", y))}
    moved["render"] = render
    fn = cfg_denoiser(model, context.to(device), None if negative is None else negative.to(device), cfg, **moved)

    def on_step(i: int, x_i: torch.Tensor, x0: torch.Tensor) -> None:
        if callback:
            callback(i, schedule.steps, x0)
        if interrupt is not None and interrupt() and i + 1 < schedule.steps:
            raise RenderInterrupted(f"render interrupted after step {i + 1} of {schedule.steps}")

    log.info("sampling %s: %d steps, shift %s, cfg %s, latent %s", sampler, schedule.steps, shift, cfg, shape)
    with torch.no_grad():
        out = SAMPLERS[sampler].solve(fn, x, schedule, on_step)
    return denormalize_latents(out)
