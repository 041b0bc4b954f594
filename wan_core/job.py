"""The render job: one render put together once, for the sampler node, the command line and the task functions.

From the model, the prompt embeddings, the request (size), the conditioning and the
:class:`~wan_core.sampling.settings.RenderSettings`, :meth:`RenderJob.run` does the whole of a render on a
:class:`~wan_core.host.Host`: it checks everything before any work, plans the device memory from the
host's budget (with the remake used after an out-of-memory step), places the model, builds the render
context (step cache, compile, plan), samples with resume, progress, cancel and manifest, and hands back
the RAW latent. The coming capabilities (expert pairs, context windows, parallel ranks) are settings and
models of this one path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .conditioning import ImageEmbeds, TextEmbeds
from .constants import VAE_STRIDE, video_frames
from .errors import InputError
from .host import Host
from .parallel import SequenceParallelRunner, parallel_groups
from .parallel.sequence import check_ring_kernel, check_ring_tokens
from .runtime.context import RenderContext
from .runtime.file_pages import release_file_pages
from .runtime.memory_plan import UNLIMITED, MemoryPlan, plan_for
from .runtime.runners import CompiledRunner, ResidentRunner, compile_unavailable
from .runtime.streaming import module_bytes
from .sampling.fixed import check_fixed
from .sampling.loop import cfg_branches, check_tensors, expert_phases, least_render_bytes, sample
from .sampling.request import SampleRequest
from .sampling.resume import ResumeStore
from .sampling.settings import RenderSettings
from .sampling.solvers import SolverState
from .sampling.windows import PerWindowRunner
from .vace import VaceEmbeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderJob:
    """One render: ``model`` (a :class:`~wan_core.WanDiT`, or a handle of one carrying LoRAs) conditioned on
    ``embeds``, at ``request``'s size unless image / VACE conditioning (whose size wins) or a start ``latent``
    (RAW ``[B, 16, F', h, w]``, video-to-video; its shape wins) says otherwise."""

    model: object
    embeds: TextEmbeds
    settings: RenderSettings
    request: SampleRequest = SampleRequest()
    latent: torch.Tensor | None = None
    image: ImageEmbeds | None = None
    vace: VaceEmbeds | None = None
    manifest: dict | None = None  # stored in the resume file (and by the caller in what it writes)
    start_state: SolverState | None = None  # settings.start_step > 0: the solver state a stopped render handed over
    fixed: torch.Tensor | None = None  # RAW [B, C, K, h, w]: the latent's first K frames, held (an extension's)

    @property
    def size(self) -> SampleRequest:
        """The size the render is made at: the conditioning's, else the request's."""
        return self.vace.request() if self.vace is not None else self.image.request() if self.image else self.request

    def size_source(self) -> tuple[str, SampleRequest] | None:
        """Where the render's size comes from when not from ``request``, and that size as the request's width /
        height / frames (VACE: without the reference frames): None when the request sets it."""
        if self.latent is not None:
            _, _, count, lat_h, lat_w = self.latent.shape
            return "the start latent", _pixels(lat_w, lat_h, count)
        if self.vace is not None:
            _, _, count, lat_h, lat_w = self.vace.context.shape
            return "the VACE conditioning", _pixels(lat_w, lat_h, count - self.vace.references)
        if self.image is not None:
            return "the image conditioning", self.image.request()
        return None

    def size_note(self) -> str | None:
        """A line saying the request's size is not what renders, when conditioning or a start latent sets another
        (a graph whose sampler widgets disagree with its conditioning node); None when they agree."""
        source = self.size_source()
        if source is None:
            return None
        where, size = source
        if (size.width, size.height, size.frames) == (self.request.width, self.request.height, self.request.frames):
            return None
        return (f"rendering {_describe(size)} as {where} sets; the sampler's own width / height / frames "
                f"({_describe(self.request)}) are not used while it is connected")

    @property
    def shape(self) -> tuple[int, ...]:
        """The RAW latent's shape ``(B, 16, F', h, w)``."""
        return tuple(self.latent.shape) if self.latent is not None else \
            self.size.latent_shape(getattr(self.model, "config", None))

    @property
    def call_shape(self) -> tuple[int, ...]:
        """The latent shape of one model call: the whole latent, or with context windows its largest window (and
        a VACE render's reference frames, which every window carries): what memory is planned and checked for."""
        return call_shape(self.settings, self.shape, self.references)

    @property
    def references(self) -> int:
        """Latent frames of VACE reference images at the start of the latent (0 without)."""
        return self.vace.references if self.vace is not None else 0

    def conditioning(self) -> dict:
        """The model's image / VACE conditioning, as :func:`~wan_core.sample` takes it."""
        out = {} if self.image is None else {"clip_fea": self.image.clip_fea, "y": self.image.y}
        if self.image is not None and self.image.first_frame is not None:  # TI2V-5B image-to-video
            out = {"first_frame": self.image.first_frame}
        config = getattr(self.model, "config", None)
        if out.get("clip_fea") is not None and config is not None and not config.has_image_branch:
            out["clip_fea"] = None  # a CLIP vision wired to a model without a CLIP branch (Wan2.2 i2v): unused
        if self.vace is not None:
            out.update(vace_context=self.vace.context, vace_strength=self.vace.strength)
        if self.fixed is not None:
            out["fixed_frames"] = self.fixed
        return out

    def check(self, device: torch.device, host: Host | None = None) -> None:
        """Everything about the render that can fail, before the model moves or any noise is drawn. The memory
        is checked against the device's free memory, or with a ``host`` against what it has free once asked to
        make room (inside ComfyUI: other models unloaded) plus what the model itself holds on the device (the
        render re-places it), so memory others could give up does not refuse a render that fits."""
        model, cond = self.model, self.conditioning()
        config, dtype = getattr(model, "config", None), getattr(model, "compute_dtype", torch.float32)
        check_cache_for(model, self.settings.cache)
        self.settings.check_for(config, self.shape, device, dtype, None if host is None else UNLIMITED)
        check_tensors(model, self.embeds.positive, self.embeds.negative, self.latent, cond.get("clip_fea"),
                      cond.get("y"), self.shape, cond.get("vace_context"))
        check_fixed(config, self.fixed, self.shape, "fixed_frames")
        parallel = self.settings.parallel
        if parallel is not None and parallel.ring > 1:
            check_ring_kernel(torch.device(device), dtype)
            if config is not None:
                check_ring_tokens(config.tokens(self.call_shape), parallel.sequence)
        if host is not None:
            check_room(host, model, self.settings, self.shape, self.references)

    def plan(self, device: torch.device, budget: int | None, model=None, cfg: float | None = None) -> MemoryPlan:
        """The memory plan of ``model`` (default: the job's; an expert of a pair) guided at ``cfg`` for ``budget``
        bytes (None: the planner's default); a step cache keeps CFG batched."""
        guided = cfg_branches(self.embeds.negative, self.settings.cfg if cfg is None else cfg) == 2
        parallel = self.settings.parallel
        guided = guided and (parallel is None or parallel.cfg == 1)  # cfg-parallel: one branch on each rank
        return plan_for(model or self.model, self.call_shape, guided, device, budget,
                        allow_sequential=self.settings.cache is None)

    def phases(self) -> list[tuple[object, int, int, float]]:
        """``(model, first step, end step, cfg)`` of each stretch of the render: one, or an expert pair's two (the
        high-noise expert's steps, then the low-noise one's; see :func:`~wan_core.sampling.loop.expert_phases`)."""
        settings = self.settings
        if getattr(self.model, "is_expert_pair", False):
            return expert_phases(self.model, settings.steps, settings.shift, settings.sampler, settings.denoise,
                                 settings.cfg, settings.stop_after or None, settings.start_step)
        return [(self.model, settings.start_step, settings.stop_after or settings.steps, settings.cfg)]

    def run(self, host: Host, on_stop: Callable[[SolverState], None] | None = None) -> torch.Tensor:
        """Render on ``host``; returns the RAW latent ``[B, 16, F', h, w]`` float32 on the CPU (VACE reference
        frames removed). An expert pair renders one expert at a time: at the switch the first leaves the device
        (through the host: inside ComfyUI its model manager) and the second is placed by its own memory plan.
        on_stop(state): with ``stop_after``, the solver state to hand to a sampler that goes on from there."""
        device = host.compute_device()
        self.check(device, host)
        note = self.size_note()
        if note is not None:
            host.report(note)
        settings, progress, folder = self.settings, host.progress(self.settings.steps), host.resume_folder()
        resume = _PhaseFiles(folder) if settings.resume == "auto" and folder is not None else None
        phases, state = self.phases(), self.start_state
        for index, (model, first, end, cfg) in enumerate(phases):
            if index:  # the first expert leaves the device, then the pages of its mapped files the RAM
                host.release(phases[index - 1][0])
                release_file_pages(phases[index - 1][0])
            kept: list[SolverState] = []
            last = index == len(phases) - 1
            stop = (settings.stop_after or None) if last else end
            args = dict(settings.sample_args(), cfg=cfg, start_step=first, start_state=state, stop_after=stop,
                        windows=settings.context, reference_frames=self.references,
                        on_stop=on_stop if last else kept.append, keep_resume=True, resume=resume,
                        manifest=self.manifest, callback=lambda i, _n, x0: progress(i + 1, x0))
            raw = self._sample(host, device, model, args)
            state = kept[0] if kept else None
        if resume is not None and not (settings.stop_after and settings.stop_after < settings.steps):
            resume.remove_handed_over()  # the whole render is done: the first stretch's saved end goes too
        return self.vace.trim(raw) if self.vace is not None else raw

    def _sample(self, host: Host, device: torch.device, model, args: dict) -> torch.Tensor:
        """One stretch of the render with ``model`` placed by its own memory plan; the RAW latent on the CPU."""
        whole = self.plan(device, UNLIMITED, model, args["cfg"])  # everything resident: what the host makes room for
        plan = self.plan(device, host.budget(model, whole.peak, self.settings.vram_budget), model, args["cfg"])
        if self.settings.parallel is not None and plan.guided:  # the ranks' calls must match: CFG the same way
            sequential = parallel_groups(self.settings.parallel).any_rank(plan.cfg_sequential)
            plan = replace(plan, cfg_sequential=sequential)
        host.report(plan.describe())

        def replan(budget: int) -> MemoryPlan:  # after running out of memory: the model leaves the device first
            host.release(model)
            return self.plan(device, budget, model, args["cfg"])

        placing = host.streaming(model) if plan.streamed else host.hold(model, plan.peak - module_bytes(model))
        with host.cancellable() as interrupt, placing as device:
            raw = sample(model, self.embeds.positive, self.embeds.negative, request=self.size, latent=self.latent,
                         render=self.render(device, plan, replan, model), interrupt=interrupt, **args,
                         **self.conditioning())
        return raw.cpu()

    def render(self, device: torch.device, plan: MemoryPlan, replan, model=None) -> RenderContext:
        """This render's context for ``model`` (default: the job's): its device, attention kernel and plan, a fresh
        step cache when one is chosen (the published tables of this model at this size), compiled blocks when
        asked."""
        model = model or self.model
        settings, config = self.settings, model.config
        refused = compile_unavailable(model, device) if settings.compile else None
        if refused:
            log.warning("compile is off for this render, which runs eagerly: %s", refused)
        runner = CompiledRunner() if settings.compile and not refused else ResidentRunner()
        groups = None
        if settings.parallel is not None:  # a render over several processes (torchrun, a pool): this rank's share
            groups = parallel_groups(settings.parallel)
            if settings.parallel.sequence > 1:
                runner = SequenceParallelRunner(runner, groups.sequence, groups.ulysses, groups.ring)
        if settings.cache is not None:  # outermost: it decides on the whole sequence, the same on every rank
            _, _, frames, h, w = self.shape
            inner = runner

            def cache():
                made = settings.cache.runner(settings.steps, cfg_branches(self.embeds.negative, settings.cfg),
                                             config.model_type, config.dim, h * VAE_STRIDE[1] * w * VAE_STRIDE[2])
                made.inner = inner
                return made

            windows = settings.context
            count = 1 if windows is None else len(windows.windows(frames - self.references, 0))
            runner = cache() if count == 1 else PerWindowRunner(cache, count)  # each window's own cache state
        return RenderContext(device=device, attention=settings.attention, plan=plan, replan=replan, runner=runner,
                             parallel=groups)


def check_cache_for(model, cache) -> None:
    """MagCache and TeaCache run from tables published for the Wan2.1 models; the Wan2.2 ones (an A14B expert pair,
    whose text-to-video experts have the Wan2.1 14B shape; TI2V-5B; the i2v experts) have none: an
    :class:`~wan_core.InputError` says so and offers the first-block cache, which needs no table."""
    config = getattr(model, "config", None)
    wan22 = getattr(model, "is_expert_pair", False) or (config is not None and (
        config.model_type == "ti2v" or (config.takes_image_latents and not config.has_image_branch)))
    if wan22 and cache is not None and cache.kind in ("mag", "tea"):
        raise InputError(f"the {cache.kind} cache runs from tables published for Wan2.1 models; there are none for "
                         "Wan2.2 (A14B experts, TI2V-5B): use the first_block cache, or none")


def _pixels(lat_w: int, lat_h: int, latent_count: int) -> SampleRequest:
    """The request whose latent is ``latent_count`` frames of ``lat_h x lat_w`` cells."""
    return SampleRequest(width=lat_w * VAE_STRIDE[2], height=lat_h * VAE_STRIDE[1], frames=video_frames(latent_count))


class _PhaseFiles(ResumeStore):
    """The resume store of one render, remembering each stretch's file: a stretch that hands over to the next
    expert keeps its file (its state at the hand-over), so after a kill in the second stretch the first is not
    computed again; those files go when the whole render has finished."""

    def __init__(self, folder):
        super().__init__(folder)
        self.handed: list = []

    def file_for(self, identity: str):
        file = super().file_for(identity)
        self.handed.append(file)
        return file

    def remove_handed_over(self) -> None:
        for file in self.handed[:-1]:
            file.remove()


def _describe(size: SampleRequest) -> str:
    return f"{size.width}x{size.height}, {size.frames} frames"


def call_shape(settings: RenderSettings, latent_shape: tuple[int, ...], references: int = 0) -> tuple[int, ...]:
    """The latent shape of one model call of a render of ``latent_shape`` (``references`` VACE reference frames at
    its start): with context windows, the largest window and the reference frames, else the whole latent."""
    if settings.context is None:
        return tuple(latent_shape)
    batch, channels, frames, h, w = latent_shape
    return batch, channels, references + settings.context.window_frames(frames - references), h, w


def check_room(host: Host, model, settings: RenderSettings, latent_shape: tuple[int, ...], references: int = 0) -> None:
    """The render's memory check against what ``host`` has free once asked to make room for the leanest plan of
    one model call (:func:`call_shape`: with context windows, a window's), inside ComfyUI other models unloaded,
    plus what ``model`` itself holds on the device (the render re-places it): raises
    :class:`~wan_core.InputError` naming both sizes when even that is too little."""
    config, dtype = getattr(model, "config", None), getattr(model, "compute_dtype", torch.float32)
    if config is None:
        return
    device = host.compute_device()
    host.make_room(least_render_bytes(config, call_shape(settings, latent_shape, references), dtype))
    settings.check_for(config, latent_shape, device, dtype, host.free_memory() + _bytes_on(model, device))


def _bytes_on(model, device: torch.device) -> int:
    """Bytes of ``model``'s weights on ``device`` when that is an accelerator (a CPU's are not given up)."""
    device = torch.device(device)
    if device.type == "cpu" or not isinstance(model, torch.nn.Module):
        return 0
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == device.type)
