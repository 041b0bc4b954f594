"""Whole-task functions: text / image / VACE conditioning to RAW latents, and on to video.

Each is inputs -> :class:`~wan_core.sampling.settings.RenderSettings` -> :class:`~wan_core.job.RenderJob`
-> output, on a :class:`~wan_core.host.Host` (default: a :class:`~wan_core.host.StandaloneHost` computing
where the DiT's weights are). Settings come as ``settings=`` or as keyword arguments naming its fields
(``seed=42, steps=4, cache=StepCacheSettings("mag")``...), over the task's official defaults. Used by the
command line and by scripts; the nodes run the same job, one stage per node.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .conditioning import ImageEmbeds, TextEmbeds
from .errors import InputError
from .extend import Extension, check_extension, extend
from .host import Host, StandaloneHost, device_of
from .i2v import check_image, image_conditioning
from .job import RenderJob, check_room
from .models.dit import WanDiT
from .models.text_encoder import TextEncoder
from .models.vae import WanVAE
from .runtime.memory_plan import UNLIMITED
from .sampling.request import SampleRequest
from .sampling.settings import RenderSettings
from .stages import decode_latent, encode_text
from .vace import VaceEmbeds, vace_conditioning, vace_request

DEFAULTS = {"t2v": {"steps": 50, "shift": 5.0}, "i2v": {"steps": 40, "shift": 3.0},
            "flf2v": {"steps": 40, "shift": 3.0}, "vace": {"steps": 50, "shift": 5.0},
            "ti2v": {"steps": 50, "shift": 5.0, "cfg": 5.0}}
"""The official step counts and shifts of each task (use shift 5.0 for 720p i2v and 16 for flf2v)."""


def text_to_latent(dit: WanDiT, text_encoder: TextEncoder, prompt: str, negative: str | None = None, *,
                   width: int = 832, height: int = 480, frames: int = 81, settings: RenderSettings | None = None,
                   host: Host | None = None, manifest: dict | None = None, extension: Extension | None = None,
                   segment_prompts: tuple[str, ...] = (), **choices) -> torch.Tensor:
    """Prompt -> RAW latents ``[1, 16, F', H/8, W/8]``. Everything is checked before any work. extension: the
    clip continued in latent space to ``extension.frames`` (:mod:`~wan_core.extend`), its new segments with
    ``segment_prompts`` (one per segment, the last for the rest; none: ``prompt``)."""
    request = SampleRequest(width, height, frames)
    settings, host = _prepare(dit, _task(dit, "t2v"), request, prompt, negative, settings, choices, host)
    embeds = encode_text(text_encoder, prompt, negative, host, settings.vram_budget)
    prompts = _segment_embeds(text_encoder, extension, segment_prompts, negative, embeds, host, settings)
    job = RenderJob(dit, embeds, settings, request, manifest=manifest)
    _check_extension(dit, extension, prompts, job, host)
    raw = job.run(host)
    return _extended(dit, raw, extension, prompts, settings, host, manifest)


def _segment_embeds(text_encoder: TextEncoder, extension: Extension | None, prompts: tuple[str, ...],
                    negative: str | None, embeds: TextEmbeds, host: Host, settings: RenderSettings) -> list:
    """The text embeddings of an extension's segments (encoded before any render starts): ``embeds`` when no
    prompt of their own is given."""
    if extension is None:
        return []
    return [encode_text(text_encoder, text, negative, host, settings.vram_budget) for text in prompts] or [embeds]


def _check_extension(dit, extension: Extension | None, prompts: list, job: RenderJob, host: Host,
                     image: ImageEmbeds | None = None, vace: VaceEmbeds | None = None) -> None:
    """The extension's checks before the clip renders, on a zero latent of the clip's shape."""
    if extension is not None:
        shape = list(job.shape)
        shape[2] -= job.references
        check_extension(dit, prompts, torch.zeros(shape), extension, job.settings, host, image, vace)


def _extended(dit, raw: torch.Tensor, extension: Extension | None, prompts: list, settings: RenderSettings,
              host: Host, manifest: dict | None, image: ImageEmbeds | None = None,
              vace: VaceEmbeds | None = None) -> torch.Tensor:
    """``raw`` as it is, or continued by ``extension`` with the render's own conditioning."""
    if extension is None:
        return raw
    return extend(dit, prompts, raw, extension, settings, host, image=image, vace=vace, manifest=manifest)


def _task(dit, task: str) -> str:
    """``task``, or "ti2v" for the Wan2.2 TI2V-5B model (text and image to video in one model)."""
    return "ti2v" if dit.config.model_type == "ti2v" else task


def text_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, prompt: str, negative: str | None = None,
                  *, host: Host | None = None, **settings) -> torch.Tensor:
    """Prompt -> video ``[1, 3, frames, height, width]`` in [-1, 1] (settings as :func:`text_to_latent`)."""
    host = host or StandaloneHost(device_of(dit))
    return decode_latent(vae, text_to_latent(dit, text_encoder, prompt, negative, host=host, **settings), host, "off")


def image_to_latent(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, clip, start: torch.Tensor, prompt: str,
                    negative: str | None = None, *, end: torch.Tensor | None = None, width: int = 832,
                    height: int = 480, frames: int = 81, settings: RenderSettings | None = None,
                    host: Host | None = None, manifest: dict | None = None, extension: Extension | None = None,
                    segment_prompts: tuple[str, ...] = (), **choices) -> torch.Tensor:
    """Start image (and, for flf2v, end image) -> RAW latents ``[1, 16, F', H/8, W/8]``; extension /
    segment_prompts as :func:`text_to_latent`.

    start / end: ComfyUI IMAGE ``[1, H, W, 3]`` in 0..1. Defaults follow the official i2v (40 steps,
    shift 3.0 at 480p; use shift 5.0 at 720p and 16 for flf2v). Model kind and conditioning are
    checked before any work.
    """
    request = SampleRequest(width, height, frames)
    check_image("start image", start)
    if end is not None:
        check_image("end image", end)
    task = _task(dit, "flf2v" if end is not None else "i2v")
    if task == "ti2v" and end is not None:
        raise InputError("the TI2V-5B model renders from a start image only; leave out the end image")
    settings, host = _prepare(dit, task, request, prompt, negative, settings, choices, host)
    if dit.config.has_image_branch and clip is None:
        raise InputError(f"this {task} model takes CLIP vision tokens of the image: load a CLIP vision model "
                         "(clip_vision_h.safetensors) and give it")
    clip = clip if dit.config.has_image_branch else None  # Wan2.2 i2v: the image goes in through y only
    embeds = encode_text(text_encoder, prompt, negative, host, settings.vram_budget)
    prompts = _segment_embeds(text_encoder, extension, segment_prompts, negative, embeds, host, settings)
    with host.on_device(*(m for m in (clip, vae) if m is not None)):
        image = image_conditioning(vae, clip, start, width, height, frames, end=end)
    job = RenderJob(dit, embeds, settings, request, image=image, manifest=manifest)
    _check_extension(dit, extension, prompts, job, host, image=image)
    raw = job.run(host)
    return _extended(dit, raw, extension, prompts, settings, host, manifest, image=image)


def image_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, clip, start: torch.Tensor, prompt: str,
                   negative: str | None = None, *, host: Host | None = None, **settings) -> torch.Tensor:
    """Start (and end) image -> video ``[1, 3, frames, height, width]`` in [-1, 1] (see :func:`image_to_latent`)."""
    host = host or StandaloneHost(device_of(dit))
    raw = image_to_latent(dit, text_encoder, vae, clip, start, prompt, negative, host=host, **settings)
    return decode_latent(vae, raw, host, "off")


def vace_to_latent(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, prompt: str, negative: str | None = None,
                   *, control: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   references: torch.Tensor | tuple = (), vace_strength: float = 1.0, width: int = 832,
                   height: int = 480, frames: int = 81, settings: RenderSettings | None = None,
                   host: Host | None = None, manifest: dict | None = None, extension: Extension | None = None,
                   segment_prompts: tuple[str, ...] = (), **choices) -> torch.Tensor:
    """A VACE render -> RAW latents ``[1, 16, F', H/8, W/8]`` (reference frames removed); extension /
    segment_prompts as :func:`text_to_latent`.

    control (IMAGE ``[N, H, W, 3]``), mask (MASK ``[N, H, W]``, 1 = generate) and references (IMAGE
    ``[R, H, W, 3]``) as :func:`~wan_core.vace.vace_conditioning` takes them; all optional.
    """
    refs = len(references) if references is not None else 0
    request = vace_request(width, height, frames, refs)
    settings, host = _prepare(dit, "vace", request, prompt, negative, settings, choices, host)
    embeds = encode_text(text_encoder, prompt, negative, host, settings.vram_budget)
    prompts = _segment_embeds(text_encoder, extension, segment_prompts, negative, embeds, host, settings)
    with host.cancellable() as interrupt, host.on_device(vae):
        vace = vace_conditioning(vae, width, height, frames, control, mask, references, vace_strength, interrupt)
    asked = SampleRequest(width, height, frames)  # what the user set; the conditioning adds the reference frames
    job = RenderJob(dit, embeds, settings, asked, vace=vace, manifest=manifest)
    _check_extension(dit, extension, prompts, job, host, vace=vace)
    raw = job.run(host)
    return _extended(dit, raw, extension, prompts, settings, host, manifest, vace=vace)


def vace_to_video(dit: WanDiT, text_encoder: TextEncoder, vae: WanVAE, prompt: str, negative: str | None = None,
                  *, host: Host | None = None, **settings) -> torch.Tensor:
    """A VACE render -> video ``[1, 3, frames, height, width]`` in [-1, 1] (see :func:`vace_to_latent`)."""
    host = host or StandaloneHost(device_of(dit))
    return decode_latent(vae, vace_to_latent(dit, text_encoder, vae, prompt, negative, host=host, **settings), host,
                         "off")


TASK_NEEDS = {"t2v": "a prompt", "i2v": "one start image", "flf2v": "a start and an end image",
              "vace": "VACE conditioning (control video, mask, reference images)",
              "ti2v": "a prompt, and optionally a start image"}
_ARTICLE = {"t2v": "a", "i2v": "an", "flf2v": "an", "vace": "a", "ti2v": "a"}


def check_task(dit_or_config, task: str) -> None:
    """Raise :class:`InputError` unless the DiT (or its config) is made for ``task`` ("t2v", "i2v", "flf2v",
    "vace")."""
    kind = getattr(dit_or_config, "config", dit_or_config).model_type
    if kind == "ti2v" and task in ("t2v", "i2v"):  # the TI2V-5B model does both
        return
    if kind != task:
        raise InputError(f"this is {_ARTICLE[kind]} {kind} model, which takes {TASK_NEEDS[kind]}; {_ARTICLE[task]} "
                         f"{task} render needs {TASK_NEEDS[task]} and {_ARTICLE[task]} {task} checkpoint: load one "
                         f"(or give this model {TASK_NEEDS[kind]})")


def _prepare(dit: WanDiT, task: str, request: SampleRequest, prompt, negative, settings: RenderSettings | None,
             choices: dict, host: Host | None) -> tuple[RenderSettings, Host]:
    """The render's settings (``choices`` over ``settings``, or over the task's defaults) and host, and every
    check that can be made before the text encoder runs."""
    check_task(dit, task)
    for name, text in (("prompt", prompt), ("negative prompt", negative)):
        if text is not None and not isinstance(text, str):
            raise InputError(f"the {name} must be text, got {type(text).__name__}")
    try:
        settings = replace(settings, **choices) if settings is not None else RenderSettings(**{**DEFAULTS[task],
                                                                                               **choices})
    except TypeError as err:  # a keyword that is no setting
        raise InputError(f"{err}; the settings are {', '.join(RenderSettings.__dataclass_fields__)}") from err
    host = host or StandaloneHost(device_of(dit))
    shape = request.latent_shape(dit.config)
    settings.check_for(dit.config, shape, host.compute_device(), dit.compute_dtype, UNLIMITED)
    check_room(host, dit, settings, shape)  # memory others hold and would free counts
    return settings, host
