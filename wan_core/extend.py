"""Extension in latent space: a LATENT continued segment by segment, never decoded between them.

Each new segment is one render of ``segment`` frames whose first K latent frames are the last K of the video so
far (``overlap`` pixel frames, 4 per latent frame), conditioned on them as the model was trained to be:

- t2v (and TI2V-5B) models: those frames are held fixed (:mod:`.sampling.fixed`: noised to each step's level for
  Wan2.1 / Wan2.2 A14B t2v, at timestep 0 for the 5B) and the rest is denoised;
- i2v / flf2v models: through the image conditioning, as a start image would be: mask 1 over those frames and
  their latents in ``y``, the rest of ``y`` the clip's own latents of blank frames (what its image conditioning
  holds after the image); the CLIP features of the clip's start image are kept;
- VACE models: the VACE extend recipe (kept frames inactive with mask 0, the rest generated with mask 1), with the
  latents of blank frames taken from the clip's own VACE conditioning.

The joined latent is the video so far, unchanged, followed by each segment's new frames: the K frames a segment
shares with the video before it are the earlier render's (bit for bit; for t2v models the segment ends exactly on
them anyway), so nothing rendered is ever changed and no frame passes through the VAE again. Decode once, at the
end, over the whole latent (the causal VAE, chunked and tiled as any decode). Each segment may have its own
prompt ("prompt travel") and draws its own noise (seed + segment number).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .conditioning import ImageEmbeds, TextEmbeds
from .constants import VAE_STRIDE, WAN22_VAE_STRIDE, latent_frames, video_frames
from .errors import InputError
from .job import RenderJob
from .latents import normalize_latents
from .sampling.request import SampleRequest
from .sampling.settings import RenderSettings
from .vace import VaceEmbeds

log = logging.getLogger(__name__)

VACE_LATENT = 16
"""Channels of each of the VACE context's two latent parts (inactive, reactive); its last 64 are the mask."""


@dataclass(frozen=True)
class Extension:
    """A LATENT continued to ``frames`` pixel frames in all (4n+1) by segments of ``segment`` frames (4n+1), each
    carrying ``overlap`` frames (a multiple of 4: 4 per latent frame) from the end of the video before it."""

    frames: int
    overlap: int = 16
    segment: int = 81

    def __post_init__(self) -> None:
        for name in ("frames", "overlap", "segment"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"extension {name} must be a whole number of frames, got {value!r}")
        step = VAE_STRIDE[0]
        for name in ("frames", "segment"):
            value = getattr(self, name)
            if value < 1 or (value - 1) % step:
                lower = max(1, value - (value - 1) % step)
                raise InputError(f"extension {name} must be {step}n+1 frames, got {value}; use {lower} or "
                                 f"{lower + step}")
        if self.overlap < step or self.overlap % step or self.carry >= self.length:
            raise InputError(f"extension overlap must be a multiple of {step} frames, at least {step} and below "
                             f"the segment's {self.segment - 1}, got {self.overlap}; try "
                             f"{max(step, min(16, step * (self.length - 2)))}")

    @property
    def carry(self) -> int:
        """Latent frames each segment carries from the video before it (K)."""
        return self.overlap // VAE_STRIDE[0]

    @property
    def length(self) -> int:
        """Latent frames per segment (the last may be shorter)."""
        return latent_frames(self.segment)

    def segments(self, have: int) -> list[int]:
        """Latent frames of each new segment (carried + new) that take a latent of ``have`` latent frames to
        :attr:`frames`; empty when it is that long already. A latent longer than that is an error."""
        want = latent_frames(self.frames)
        if have > want:
            raise InputError(f"the LATENT has {video_frames(have)} frames, more than the {self.frames} to extend "
                             f"to; set frames to at least {video_frames(have)}")
        out, step = [], self.length - self.carry
        while have < want:
            new = min(step, want - have)
            out.append(self.carry + new)
            have += new
        return out


def extension_recipe(config) -> str:
    """``fixed`` (t2v / TI2V), ``image`` (i2v / flf2v) or ``vace``: how a model of ``config`` is conditioned on
    the frames it continues from."""
    if config is None:
        return "fixed"
    if config.model_type == "vace":
        return "vace"
    return "image" if config.takes_image_latents else "fixed"


def image_segment(image: ImageEmbeds, tail: torch.Tensor, length: int) -> ImageEmbeds:
    """The i2v conditioning of a segment of ``length`` latent frames that continues from RAW ``tail``
    ``[B, 16, K, h, w]``: mask 1 over the K frames, their normalized latents, then the clip's blank-frame latents
    (the last frame of its own ``y``) over the rest; the clip's CLIP features."""
    if image is None or image.y is None:
        raise InputError("extending with an image-to-video model needs the clip's image conditioning (the "
                         "image_embeds its render used): connect it")
    y, count = image.y, tail.shape[2]
    if tuple(y.shape[3:]) != tuple(tail.shape[3:]):
        raise InputError(f"the image conditioning is for a {y.shape[4] * VAE_STRIDE[2]}x{y.shape[3] * VAE_STRIDE[1]} "
                         f"latent, the LATENT is {tail.shape[4] * VAE_STRIDE[2]}x{tail.shape[3] * VAE_STRIDE[1]}: "
                         "connect the image_embeds the clip was rendered with")
    batch, _, _, h, w = tail.shape
    mask = torch.zeros(batch, VAE_STRIDE[0], length, h, w)
    mask[:, :, :count] = 1
    blank = y[:, VAE_STRIDE[0]:, -1:].float().expand(batch, -1, length - count, -1, -1)
    latents = torch.cat([normalize_latents(tail.float()), blank], dim=2)
    return ImageEmbeds(image.clip_fea, torch.cat([mask, latents], dim=1))


def vace_segment(vace: VaceEmbeds, tail: torch.Tensor, length: int) -> VaceEmbeds:
    """The VACE context of a segment of ``length`` latent frames that continues from RAW ``tail``: the K frames
    kept (inactive: their normalized latents; reactive: blank; mask 0), the rest generated (both parts blank; mask
    1). Blank: the clip's own inactive latents at its last frame to generate (control x (1 - mask) is 0 there)."""
    if vace is None:
        raise InputError("extending with a VACE model needs the clip's VACE conditioning (the vace its render "
                         "used): connect it")
    context, count = vace.context, tail.shape[2]
    masks = context[:, 2 * VACE_LATENT:]
    generated = [f for f in range(vace.references, context.shape[2]) if bool((masks[:, :, f] > 0.5).all())]
    if not generated:
        raise InputError("the clip's VACE conditioning generates no frame whole (its mask keeps every frame), so "
                         "it holds no blank latents to extend with; use a conditioning with frames to generate")
    blank = context[:, :VACE_LATENT, generated[-1]:generated[-1] + 1].float()
    batch, _, _, h, w = tail.shape
    inactive = torch.cat([normalize_latents(tail.float()), blank.expand(batch, -1, length - count, -1, -1)], dim=2)
    reactive = blank.expand(batch, -1, length, -1, -1)
    mask = torch.ones(batch, masks.shape[1], length, h, w)
    mask[:, :, :count] = 0
    return VaceEmbeds(torch.cat([inactive, reactive, mask], dim=1), 0, vace.strength)


def extend(model, prompts: TextEmbeds | Sequence[TextEmbeds], latent: torch.Tensor, extension: Extension,
           settings: RenderSettings, host, image: ImageEmbeds | None = None, vace: VaceEmbeds | None = None,
           manifest: dict | None = None, on_segment: Callable[[int, int, torch.Tensor], None] | None = None
           ) -> torch.Tensor:
    """``latent`` (RAW ``[B, C, F', h, w]``) continued to ``extension.frames`` (module docstring) with ``model``
    (a DiT, a LoRA handle or an expert pair) on ``host``. prompts: one TextEmbeds for every segment, or one per
    segment (the last serves the segments after it); image / vace: the clip's conditioning (i2v / VACE models).
    Every segment is a :class:`RenderJob` with ``settings`` (seed + segment number), checked before the first
    starts. on_segment(number, count, joined): after each. Returns the joined RAW latent."""
    jobs = check_extension(model, prompts, latent, extension, settings, host, image, vace, manifest)
    recipe = extension_recipe(getattr(model, "config", None))
    log.info("extending %d to %d frames: %d segments of up to %d frames carrying %d (%s)",
             video_frames(latent.shape[2]), extension.frames, len(jobs), extension.segment, extension.overlap, recipe)
    joined = latent.float().cpu()
    for number, job in enumerate(jobs):
        length = job.size.latent_shape(getattr(model, "config", None))[2]
        job = _segment_job(model, job.embeds, job.settings, joined, length, extension.carry, recipe, image, vace,
                           manifest)
        segment = job.run(host)
        joined = torch.cat([joined, segment[:, :, extension.carry:].float().cpu()], dim=2)
        if on_segment is not None:
            on_segment(number + 1, len(jobs), joined)
    return joined


def check_extension(model, prompts: TextEmbeds | Sequence[TextEmbeds], latent: torch.Tensor, extension: Extension,
                    settings: RenderSettings, host, image: ImageEmbeds | None = None, vace: VaceEmbeds | None = None,
                    manifest: dict | None = None) -> list[RenderJob]:
    """Every check of :func:`extend`, run before its first segment (or, with a zero ``latent`` of the clip's shape,
    before the clip itself is rendered): the lengths, the conditioning the model needs, and each segment's job
    (settings, sizes, memory). Returns the segments' jobs, built on ``latent``'s last frames."""
    prompts = [prompts] if isinstance(prompts, TextEmbeds) else list(prompts)
    if not prompts:
        raise InputError("extending needs a prompt for the new segments")
    lengths = extension.segments(latent.shape[2])
    if lengths and extension.carry > latent.shape[2]:
        raise InputError(f"the extension carries {extension.overlap} frames into each segment, but the LATENT has "
                         f"only {video_frames(latent.shape[2])}: lower the overlap")
    recipe = extension_recipe(getattr(model, "config", None))
    jobs = [_segment_job(model, prompts[min(i, len(prompts) - 1)], replace(settings, seed=settings.seed + i + 1),
                         latent, n, extension.carry, recipe, image, vace, manifest) for i, n in enumerate(lengths)]
    device = host.compute_device()
    for job in jobs:
        job.check(device, host)
    return jobs


def _segment_job(model, embeds: TextEmbeds, settings: RenderSettings, video: torch.Tensor, length: int, carry: int,
                 recipe: str, image: ImageEmbeds | None, vace: VaceEmbeds | None, manifest: dict | None) -> RenderJob:
    """The render of one segment of ``length`` latent frames continuing from the last ``carry`` of ``video``."""
    tail = video[:, :, -carry:]
    _, _, _, h, w = video.shape
    ti2v = getattr(getattr(model, "config", None), "model_type", None) == "ti2v"
    stride = WAN22_VAE_STRIDE if ti2v else VAE_STRIDE
    request = SampleRequest(w * stride[2], h * stride[1], video_frames(length), video.shape[0])
    if recipe == "image":
        return RenderJob(model, embeds, settings, request, image=image_segment(image, tail, length), manifest=manifest)
    if recipe == "vace":
        return RenderJob(model, embeds, settings, request, vace=vace_segment(vace, tail, length), manifest=manifest)
    return RenderJob(model, embeds, settings, request, fixed=tail, manifest=manifest)
