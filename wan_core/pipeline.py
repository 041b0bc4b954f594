"""Whole-task functions on top of the pieces: text / image to RAW latents, and on to video.

Used by the CLI and by scripts; the nodes call the same pieces one stage per node.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .conditioning import encode_prompts
from .errors import InputError
from .i2v import check_image, image_conditioning
from .models.dit import WanDiT
from .models.text_encoder import TextEncoder
from .models.vae import WanVAE
from .models.vae_tiling import decode_with_fallback
from .runtime.context import RenderContext
from .sampling.loop import check_render, sample
from .sampling.request import SampleRequest
from .vace import vace_conditioning

StepCallback = Callable[[int, int, torch.Tensor], None]


def text_to_latent(dit: WanDiT, text_encoder: TextEncoder, prompt: str, negative: str | None = None, *,
                   width: int = 832, height: int = 480, frames: int = 81, seed: int = 0, steps: int = 50,
                   cfg: float = 5.0, shift: float = 5.0, sampler: str = "unipc", render: RenderContext | None = None,
                   callback: StepCallback | None = None, interrupt: Callable[[], bool] | None = None,
                   **resumable) -> torch.Tensor:
    """Prompt -> RAW latents ``[1, 16, F', H/8, W/8]``. Everything is checked before any work.

    ``resumable``: ``resume``, ``stop_after`` and ``manifest`` as :func:`~wan_core.sample` takes them.
    """
    request = SampleRequest(width, height, frames)
    check_task(dit, "t2v")
    render = _preflight(dit, request, prompt, negative, seed, steps, cfg, shift, sampler, render)
    embeds = encode_prompts(text_encoder, prompt, negative, interrupt=interrupt)
    return sample(dit, embeds.positive, embeds.negative, request=request, seed=seed, steps=steps, cfg=cfg,
                  shift=shift, sampler=sampler, render=render, callback=callback, interrupt=interrupt, **resumable)


def text_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, prompt: str, negative: str | None = None,
                  *, interrupt: Callable[[], bool] | None = None, **settings) -> torch.Tensor:
    """Prompt -> video ``[1, 3, frames, height, width]`` in [-1, 1] (settings as :func:`text_to_latent`)."""
    raw = text_to_latent(dit, text_encoder, prompt, negative, interrupt=interrupt, **settings)
    return decode_with_fallback(vae, raw, interrupt=interrupt)


def image_to_latent(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, clip, start: torch.Tensor, prompt: str,
                    negative: str | None = None, *, end: torch.Tensor | None = None, width: int = 832,
                    height: int = 480, frames: int = 81, seed: int = 0, steps: int = 40, cfg: float = 5.0,
                    shift: float = 3.0, sampler: str = "unipc", render: RenderContext | None = None,
                    callback: StepCallback | None = None, interrupt: Callable[[], bool] | None = None,
                    **resumable) -> torch.Tensor:
    """Start image (and, for flf2v, end image) -> RAW latents ``[1, 16, F', H/8, W/8]``.

    start / end: ComfyUI IMAGE ``[1, H, W, 3]`` in 0..1. Defaults follow the official i2v (40 steps,
    shift 3.0 at 480p; use shift 5.0 at 720p and 16 for flf2v). Model kind and conditioning are
    checked before any work.
    """
    request = SampleRequest(width, height, frames)
    check_task(dit, "flf2v" if end is not None else "i2v")
    check_image("start image", start)
    if end is not None:
        check_image("end image", end)
    render = _preflight(dit, request, prompt, negative, seed, steps, cfg, shift, sampler, render)
    embeds = encode_prompts(text_encoder, prompt, negative, interrupt=interrupt)
    image = image_conditioning(vae, clip, start, width, height, frames, end=end)
    return sample(dit, embeds.positive, embeds.negative, request=request, seed=seed, steps=steps, cfg=cfg,
                  shift=shift, sampler=sampler, clip_fea=image.clip_fea, y=image.y, render=render,
                  callback=callback, interrupt=interrupt, **resumable)


def image_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, clip, start: torch.Tensor, prompt: str,
                   negative: str | None = None, *, interrupt: Callable[[], bool] | None = None,
                   **settings) -> torch.Tensor:
    """Start (and end) image -> video ``[1, 3, frames, height, width]`` in [-1, 1] (see :func:`image_to_latent`)."""
    raw = image_to_latent(dit, text_encoder, vae, clip, start, prompt, negative, interrupt=interrupt, **settings)
    return decode_with_fallback(vae, raw, interrupt=interrupt)


def vace_to_latent(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, prompt: str, negative: str | None = None,
                   *, control: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   references: torch.Tensor | tuple = (), vace_strength: float = 1.0, width: int = 832,
                   height: int = 480, frames: int = 81, seed: int = 0, steps: int = 50, cfg: float = 5.0,
                   shift: float = 5.0, sampler: str = "unipc", render: RenderContext | None = None,
                   callback: StepCallback | None = None, interrupt: Callable[[], bool] | None = None,
                   **resumable) -> torch.Tensor:
    """A VACE render -> RAW latents ``[1, 16, F', H/8, W/8]`` (reference frames removed).

    control (IMAGE ``[N, H, W, 3]``), mask (MASK ``[N, H, W]``, 1 = generate) and references (IMAGE
    ``[R, H, W, 3]``) as :func:`~wan_core.vace.vace_conditioning` takes them; all optional.
    """
    check_task(dit, "vace")
    refs = len(references) if references is not None else 0
    request = SampleRequest(width, height, frames + 4 * refs)  # one latent frame per reference image
    render = _preflight(dit, request, prompt, negative, seed, steps, cfg, shift, sampler, render)
    embeds = encode_prompts(text_encoder, prompt, negative, interrupt=interrupt)
    vace = vace_conditioning(vae, width, height, frames, control, mask, references, vace_strength, interrupt)
    raw = sample(dit, embeds.positive, embeds.negative, request=vace.request(), seed=seed, steps=steps, cfg=cfg,
                 shift=shift, sampler=sampler, render=render, callback=callback, interrupt=interrupt,
                 vace_context=vace.context, vace_strength=vace.strength, **resumable)
    return vace.trim(raw)


def vace_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, prompt: str, negative: str | None = None,
                  *, interrupt: Callable[[], bool] | None = None, **settings) -> torch.Tensor:
    """A VACE render -> video ``[1, 3, frames, height, width]`` in [-1, 1] (see :func:`vace_to_latent`)."""
    raw = vace_to_latent(dit, text_encoder, vae, prompt, negative, interrupt=interrupt, **settings)
    return decode_with_fallback(vae, raw, interrupt=interrupt)


TASK_NEEDS = {"t2v": "a prompt", "i2v": "one start image", "flf2v": "a start and an end image",
              "vace": "VACE conditioning (control video, mask, reference images)"}
_ARTICLE = {"t2v": "a", "i2v": "an", "flf2v": "an", "vace": "a"}


def check_task(dit_or_config, task: str) -> None:
    """Raise :class:`InputError` unless the DiT (or its config) is made for ``task`` ("t2v", "i2v", "flf2v",
    "vace")."""
    kind = getattr(dit_or_config, "config", dit_or_config).model_type
    if kind != task:
        raise InputError(f"this is {_ARTICLE[kind]} {kind} model, which takes {TASK_NEEDS[kind]}; {_ARTICLE[task]} "
                         f"{task} render needs {TASK_NEEDS[task]} and {_ARTICLE[task]} {task} checkpoint: load one "
                         f"(or give this model {TASK_NEEDS[kind]})")


def _preflight(dit: WanDiT, request: SampleRequest, prompt, negative, seed, steps, cfg, shift, sampler,
               render: RenderContext | None) -> RenderContext:
    """Everything about a render that can be checked before the text encoder runs."""
    for name, text in (("prompt", prompt), ("negative prompt", negative)):
        if text is not None and not isinstance(text, str):
            raise InputError(f"the {name} must be text, got {type(text).__name__}")
    render = render or RenderContext()
    check_render(dit.config, request.latent_shape(), seed=seed, steps=steps, cfg=cfg, shift=shift, sampler=sampler,
                 device=render.device_for(dit), compute_dtype=render.dtype_for(dit))
    return render
