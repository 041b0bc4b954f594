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

from ..constants import LATENT_CHANNELS, VAE_STRIDE, WAN22_VAE_STRIDE, video_frames
from ..errors import CheckpointError, InputError, RenderError, RenderInterrupted, WanCoreError
from ..latents import denormalize_latents, normalize_latents
from ..parallel.groups import cfg_parallel_denoiser
from ..runtime.context import RenderContext
from ..runtime.file_pages import release_file_pages
from ..runtime.finite import check_finite, is_finite, nonfinite_parameters
from ..runtime.memory import check_fits, dit_activation_bytes
from ..runtime.memory_plan import FFN_CHUNKS, UNLIMITED
from ..runtime.patches import nonfinite_patches
from .fixed import check_fixed, hold_fixed
from .request import SampleRequest, check_number, check_settings
from .resume import ResumeFile, ResumeStore, render_identity
from .schedules import UNIPC_SIGMA_MAX, Schedule, causvid_schedule, flow_schedule, lightx2v_schedule
from .solvers import Denoise, SolverState, dpmpp_2m, euler, unipc
from .windows import ContextWindows, check_windows, windowed

log = logging.getLogger(__name__)

RUNNER = "runner/"
"""Prefix of a stateful block runner's (a step cache's) tensors inside a resume checkpoint."""


@dataclass(frozen=True)
class SamplerSpec:
    """A solver and its schedule: evenly spaced sigmas from ``sigma_max`` (the official UniPC starts at
    0.999), or a fixed list (``fixed(steps, shift, dim)``: the step-distill samplers)."""

    solve: Callable[..., torch.Tensor]
    sigma_max: float = 1.0
    fixed: Callable[[int, float, int], Schedule] | None = None


SAMPLERS: dict[str, SamplerSpec] = {
    "unipc": SamplerSpec(unipc, UNIPC_SIGMA_MAX),
    "dpm++": SamplerSpec(dpmpp_2m, 1.0),
    "euler": SamplerSpec(euler, 1.0),
    "lightx2v_4step": SamplerSpec(euler, fixed=lambda steps, shift, dim: lightx2v_schedule(steps, shift)),
    "causvid": SamplerSpec(euler, fixed=lambda steps, shift, dim: causvid_schedule(steps, dim)),
}


def make_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 standard normal noise from a CPU generator seeded with ``seed`` (same on any device)."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def cfg_branches(negative: torch.Tensor | None, scale: float) -> int:
    """How many CFG branches share each model call's batch: 2 (cond, then uncond), or 1 without guidance."""
    return 1 if negative is None or scale == 1.0 else 2


def cfg_denoiser(model: Callable[..., torch.Tensor], context: torch.Tensor, negative: torch.Tensor | None,
                 scale: float, sequential: bool = False, **conditioning) -> Denoise:
    """``denoise(x, t)`` = uncond + scale (cond - uncond); both halves run as one batch of 2B, or (``sequential``,
    a memory plan's choice) one after the other.

    context / negative: ``[B, L, 4096]`` text states; with ``scale == 1`` or no negative, the
    unconditional pass is skipped. ``conditioning`` (clip_fea, y, render) goes to both halves
    (tensors doubled, anything else passed as it is).
    """
    if cfg_branches(negative, scale) == 1:
        return lambda x, t: model(x, t.expand(x.shape[0]), context, **conditioning).float()
    if sequential:
        def one_at_a_time(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            tb = t.expand(x.shape[0])
            cond = model(x, tb, context, **conditioning).float()
            uncond = model(x, tb, negative, **conditioning).float()
            return uncond + scale * (cond - uncond)

        return one_at_a_time
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


def check_sampler(sampler: str, denoise: float) -> None:
    """The sampler's name, and a denoise it can run (the step-distill samplers run their fixed list from noise)."""
    if sampler not in SAMPLERS:
        raise InputError(f"sampler {sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    check_number("denoise", denoise, 0.0, 1.0, low_open=True, fix="1.0 renders from pure noise")
    if SAMPLERS[sampler].fixed is not None and denoise != 1.0:
        raise InputError(f"the {sampler} sampler runs its fixed list of steps from pure noise; set denoise to "
                         f"1.0 (got {denoise}) or use euler / unipc for a partial render")


def build_schedule(sampler: str, steps: int, shift: float, denoise: float, dim: int = 1536) -> Schedule:
    """The schedule for ``steps`` steps; with ``denoise < 1`` the last ``steps`` of ``round(steps / denoise)``.
    ``dim``: the DiT's width (the causvid list depends on it)."""
    check_sampler(sampler, denoise)
    if SAMPLERS[sampler].fixed is not None:
        return SAMPLERS[sampler].fixed(steps, shift, dim)
    total = max(steps, int(round(steps / denoise)))
    return flow_schedule(total, shift, SAMPLERS[sampler].sigma_max).tail(steps)


def check_render(config, latent_shape: tuple[int, ...], *, seed: int = 0, steps: int = 50, cfg: float = 5.0,
                 shift: float = 5.0, sampler: str = "unipc", denoise: float = 1.0, negative: bool = True,
                 device: torch.device | str = "cpu", compute_dtype: torch.dtype = torch.float32,
                 available: int | None = None, windows: ContextWindows | None = None) -> Schedule:
    """Every check of a render that needs no tensor: settings, schedule, latent size, and memory.

    config: the DiT's config (None for a stand-in model: no size or memory check); latent_shape:
    ``(B, 16, F', h, w)``. The activation estimate (of one model call: with context ``windows``, of the largest
    window) is checked against ``available`` bytes (None: ``device``'s free memory, the system's available RAM
    on CPU) before anything is allocated. Returns the schedule.
    """
    check_settings(seed, steps, cfg, shift, denoise)
    schedule = build_schedule(sampler, steps, shift, denoise, config.dim if config is not None else 1536)
    channels = LATENT_CHANNELS if config is None else config.out_dim
    if len(latent_shape) != 5 or latent_shape[1] != channels or min(latent_shape) < 1:
        raise InputError(f"latent must be [B, {channels}, F', h, w] (this model's latent channels) with every size "
                         f"at least 1, got {tuple(latent_shape)}")
    if config is not None:
        config.check_latent_shape(latent_shape)
        batch, _, f, h, w = latent_shape
        stride = WAN22_VAE_STRIDE if config.model_type == "ti2v" else VAE_STRIDE
        call_shape = latent_shape if windows is None else (batch, latent_shape[1], windows.window_frames(f), h, w)
        check_fits(least_render_bytes(config, call_shape, compute_dtype), torch.device(device),
                   f"a {video_frames(f)}-frame {w * stride[2]}x{h * stride[1]} render (batch {batch})",
                   "render fewer frames or a smaller size, or use a device with more memory", available)
    return schedule


def least_render_bytes(config, latent_shape: tuple[int, ...], compute_dtype: torch.dtype = torch.float32) -> int:
    """The activation bytes the leanest memory plan renders ``latent_shape`` with (CFG one branch at a time, the
    feed-forward in the most chunks, every block streamed); the plan itself places the weights
    (runtime.memory_plan)."""
    return dit_activation_bytes(config.dim, config.ffn_dim, config.tokens(latent_shape), latent_shape[0],
                                compute_dtype, FFN_CHUNKS[-1])


def check_tensors(model, context, negative, latent, clip_fea, y, shape, vace_context=None) -> None:
    """A render's tensors against the model's kind, each other and NaN / Inf (before any is moved or used)."""
    if hasattr(model, "check_conditioning"):  # a WanDiT: wrong kind of conditioning fails before any work
        model.check_conditioning(context, clip_fea, y, vace_context)
    if vace_context is not None:
        check_finite("the VACE conditioning", vace_context, "re-encode it with the VACE conditioning node")
        if tuple(vace_context.shape[2:]) != tuple(shape[2:]):
            raise InputError(f"the VACE conditioning covers {tuple(vace_context.shape[2:])} latent cells (frames, "
                             f"height, width) but the render is {tuple(shape[2:])}; render at the conditioning's size")
    fix = "the node or file that made it produced invalid values; re-encode it"
    check_finite("the prompt embedding", context, fix)
    check_finite("the negative prompt embedding", negative, fix)
    check_finite("the start LATENT", latent, "it comes from a damaged file or a node that failed; re-encode it")
    check_finite("the image conditioning (clip_fea)", clip_fea, fix)
    check_finite("the image conditioning (y)", y, fix)
    if y is not None and tuple(y.shape[2:]) != tuple(shape[2:]):
        _, _, f, h, w = y.shape
        raise InputError(f"the image conditioning was built for {video_frames(f)} frames at {w * VAE_STRIDE[2]}x"
                         f"{h * VAE_STRIDE[1]}, the LATENT is {video_frames(shape[2])} frames at "
                         f"{shape[4] * VAE_STRIDE[2]}x{shape[3] * VAE_STRIDE[1]}; build both at the same size")


def _broadcast(name: str, tensor: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """One item of conditioning for a batch of latents; or one per latent."""
    if tensor is None or tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise InputError(f"{tensor.shape[0]} {name}(s) for a batch of {batch} latents; use one for all or one per latent")


def sample(model, context: torch.Tensor, negative: torch.Tensor | None = None, *, request: SampleRequest = None,
           latent: torch.Tensor | None = None, seed: int = 0, steps: int = 50, cfg: float = 5.0, shift: float = 5.0,
           sampler: str = "unipc", denoise: float = 1.0, clip_fea: torch.Tensor | None = None,
           y: torch.Tensor | None = None, render: RenderContext | None = None,
           callback: Callable[[int, int, torch.Tensor], None] | None = None,
           interrupt: Callable[[], bool] | None = None, resume: ResumeFile | ResumeStore | None = None,
           stop_after: int | None = None, manifest: dict | None = None, vace_context: torch.Tensor | None = None,
           vace_strength: float = 1.0, start_step: int = 0, start_state: SolverState | None = None,
           on_stop: Callable[[SolverState], None] | None = None, keep_resume: bool = False,
           first_frame: torch.Tensor | None = None, windows: ContextWindows | None = None,
           reference_frames: int = 0, fixed_frames: torch.Tensor | None = None) -> torch.Tensor:
    """Denoise from seeded noise (or part-way from ``latent``) and return RAW latents.

    model: a :class:`~wan_core.models.dit.WanDiT` (or any callable with its signature, ``render`` included).
    render: this render's context (device, compute dtype, attention, block runner, weight patches);
    None: the defaults (compute where the model's weights are). The model itself is never changed.
    context / negative: ``[B, L<=512, 4096]`` text states. latent: RAW ``[B, 16, F', H/8, W/8]``
    start latents (video-to-video; required when ``denoise < 1``, and its shape wins over
    ``request``). One prompt or one image conditioning serves a whole batch of latents.
    callback(step, total, x0_pred) runs after each step; ``interrupt()`` returning True stops the
    render between steps with :class:`RenderInterrupted`. Everything is checked before the noise
    is drawn; NaN / Inf appearing during sampling stops the render with a :class:`RenderError`.
    resume: a :class:`ResumeStore` (the render's file in it is named by its identity) or one
    :class:`ResumeFile`; the solver's state is saved there after every step (with ``manifest``), a
    render of the same identity continues from it bit-identically, and it is removed when the render
    finishes. stop_after: stop after that many steps (of ``steps``),
    keeping the resume file, and return the prediction of the final latent at that point.
    vace_context ``[B, 96, F', H/8, W/8]`` and vace_strength: a VACE model's conditioning (:mod:`wan_core.vace`).
    start_step: begin at this step of the schedule, from ``start_state`` (the solver state another render stopped
    with: the same render goes on bit-identically) or else from ``latent`` as the noisy latent at that step (the
    solver's history starts afresh). on_stop(state): when ``stop_after`` stops the render, it is handed the
    solver state (a hand-over: the resume file is then removed, the next render continues from the state;
    ``keep_resume``: kept too, so the same render run again without stop_after also continues).
    model may be an :class:`~wan_core.ExpertPair`: each expert runs its steps (see :func:`sample_pair`).
    first_frame: RAW ``[B, 48, 1, h, w]`` latents of an image (a TI2V-5B model's image-to-video, as the official
    ``textimage2video``): the first latent frame is the image's, its tokens get timestep 0, and it is put back
    after every step.
    windows: context windows (:mod:`.windows`): every model call runs as one call per window, blended;
    reference_frames: latent frames at the start that every window carries (a VACE render's reference images).
    fixed_frames: RAW ``[B, C, K, h, w]``: the latent's first K frames are these at the end (an extension's frames
    to continue from; :mod:`.fixed`: a TI2V model sees them at timestep 0, others noised to each step's level).
    Returns RAW latents ``[B, 16, F', H/8, W/8]`` float32.
    """
    if getattr(model, "is_expert_pair", False):
        return sample_pair(model, context, negative, request=request, latent=latent, seed=seed, steps=steps,
                           cfg=cfg, shift=shift, sampler=sampler, denoise=denoise, clip_fea=clip_fea, y=y,
                           render=render, callback=callback, interrupt=interrupt, resume=resume,
                           stop_after=stop_after, manifest=manifest, vace_context=vace_context,
                           vace_strength=vace_strength, first_frame=first_frame, windows=windows,
                           reference_frames=reference_frames, fixed_frames=fixed_frames)
    render = render or RenderContext()
    check_settings(seed, steps, cfg, shift, denoise)
    is_module = isinstance(model, torch.nn.Module)
    device = render.device_for(model) if is_module else render.device or context.device
    if latent is None and denoise < 1.0:
        raise InputError(f"denoise {denoise} < 1 needs a start latent (connect a LATENT from VAE encode)")
    config = getattr(model, "config", None)
    shape = tuple(latent.shape) if latent is not None else (request or SampleRequest()).latent_shape(config)
    planned = render.plan is not None  # a render job planned it against what its host has (and can free)
    schedule = check_render(config, shape, seed=seed, steps=steps, cfg=cfg, shift=shift, sampler=sampler,
                            denoise=denoise, negative=negative is not None, device=device,
                            compute_dtype=render.dtype_for(model) if is_module else torch.float32,
                            available=UNLIMITED if planned else None, windows=windows)
    check_windows(windows, render.runner, shape[2] - reference_frames)
    check_tensors(model, context, negative, latent, clip_fea, y, shape, vace_context)
    check_fixed(config, first_frame, shape)
    check_fixed(config, fixed_frames, shape, "fixed_frames")
    if first_frame is not None and fixed_frames is not None:
        raise InputError("give first_frame (a TI2V image) or fixed_frames (frames to continue from), not both")
    context, negative = _broadcast("prompt", context, shape[0]), _broadcast("negative prompt", negative, shape[0])
    clip_fea, y = _broadcast("image conditioning", clip_fea, shape[0]), _broadcast("image conditioning", y, shape[0])
    vace_context = _broadcast("VACE conditioning", vace_context, shape[0])

    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 0):
        raise InputError(f"stop_after must be a whole number of steps (0: run to the end), got {stop_after!r}")
    start_state = _check_start(start_step, start_state, latent, denoise, schedule.steps, shape)
    identity = state = None
    if resume is not None:
        tensors = {"context": context, "negative": negative, "latent": latent, "clip_fea": clip_fea, "y": y,
                   "vace_context": vace_context, "start": None if start_state is None else start_state.x,
                   "first_frame": first_frame, "fixed_frames": fixed_frames}
        settings = dict(shape=shape, seed=seed, steps=steps, cfg=cfg, shift=shift, sampler=sampler, denoise=denoise,
                        **({"vace_strength": vace_strength} if vace_context is not None else {}),
                        **({"start_step": start_step} if start_step else {}),
                        **({"windows": repr(windows), "reference_frames": reference_frames} if windows else {}))
        identity = render_identity(model, tensors, settings, render)
        if isinstance(resume, ResumeStore):
            resume = resume.file_for(identity)
        state = resume.load(identity, schedule.steps, shape)
        if render.parallel is not None:  # every rank has read the (shared) file before any rank writes to it
            render.parallel.barrier()
        if state is not None:
            log.info("resuming from step %d of %d (%s)", state.step, schedule.steps, resume.path)
            runner_state = {k[len(RUNNER):]: v for k, v in state.history.items() if k.startswith(RUNNER)}
            if runner_state:
                render.runner.load_state(runner_state)
    if state is not None and stop_after and state.step >= stop_after:  # this render stopped here already
        log.info("the render stopped at step %d of %d already (%s)", state.step, schedule.steps, resume.path)
        if on_stop is not None:
            on_stop(state)
        return denormalize_latents(_last_prediction(state))
    state = state or start_state  # a resume file of this very render wins over the hand-over it started from
    x = noise = make_noise(shape, seed).to(device)
    if latent is not None and denoise < 1.0:
        s0 = schedule.sigmas[0].item()
        x = (1 - s0) * normalize_latents(latent.float().to(device)) + s0 * x
    moved = {k: None if v is None else v.to(device) for k, v in (("clip_fea", clip_fea), ("y", y))}
    moved["render"] = render
    if vace_context is not None:
        moved.update(vace_context=vace_context.to(device), vace_strength=float(vace_strength))
    context, negative = context.to(device), None if negative is None else negative.to(device)
    project, call = None, model
    if windows is not None:
        log.info(windows.describe(shape[2] - reference_frames))
        call = windowed(model, windows, shape[2], schedule.timesteps, reference_frames)
    held = first_frame if first_frame is not None else fixed_frames
    if held is not None:  # TI2V image-to-video's image frame, or the frames an extension continues from
        project, call = hold_fixed(config, held, noise, call, shape[2])
        x = project(x, schedule.sigmas[0])

    def denoiser() -> Denoise:  # CFG batched or one branch at a time, as the render's (current) plan says
        if render.parallel is not None and render.parallel.settings.cfg == 2 and cfg_branches(negative, cfg) == 2:
            return cfg_parallel_denoiser(call, context, negative, cfg, render.parallel, **moved)
        sequential = render.plan is not None and render.plan.cfg_sequential
        return cfg_denoiser(call, context, negative, cfg, sequential, **moved)

    fn = _retry_out_of_memory(denoiser, render)

    def on_step(i: int, x_i: torch.Tensor, x0: torch.Tensor) -> None:
        if not is_finite(x_i):
            raise _nonfinite_error(model, i, schedule.steps, render)
        if callback:
            callback(i, schedule.steps, x0)
        if stop_after and i + 1 >= stop_after and i + 1 < schedule.steps:
            raise _Stopped(i + 1, x0)
        stop = interrupt is not None and interrupt()
        if render.parallel is not None:  # one rank's interrupt (inside ComfyUI: rank 0's) stops every rank here
            stop = render.parallel.any_rank(stop)
        if stop and i + 1 < schedule.steps:
            raise RenderInterrupted(f"render interrupted after step {i + 1} of {schedule.steps}")

    last = []  # the newest solver state, for a hand-over at stop_after

    def checkpoint(solver_state: SolverState) -> None:
        last[:] = [solver_state]
        if resume is None or not is_finite(solver_state.x):
            return  # on_step stops a non-finite render right after; such a state is never worth resuming
        if hasattr(render.runner, "state"):  # a step cache: its state resumes with the solver's
            extra = {RUNNER + k: v for k, v in render.runner.state().items()}
            solver_state = SolverState(solver_state.step, solver_state.x, {**solver_state.history, **extra},
                                       solver_state.order)
        resume.save(identity, schedule.steps, solver_state, manifest)

    log.info("sampling %s: %d steps, shift %s, cfg %s, latent %s", sampler, schedule.steps, shift, cfg, shape)
    try:
        with torch.no_grad():
            out = SAMPLERS[sampler].solve(fn, x, schedule, on_step, checkpoint if resume or on_stop else None, state,
                                          project=project)
    except _Stopped as stopped:
        if on_stop is not None:
            if resume is not None and not keep_resume:
                resume.remove()  # handed over: the next render goes on from the state, with its own resume file
            elif resume is not None:
                resume.flush()
            on_stop(last[0])
            return denormalize_latents(stopped.x0)
        if resume is not None:
            resume.flush()
        log.info("stopped after step %d of %d; the render continues from there when run again", stopped.step,
                 schedule.steps)
        return denormalize_latents(stopped.x0)
    except BaseException:
        if resume is not None:
            _flush_quietly(resume)  # an interrupted or failed render leaves its last finished step on disk
        render.release()  # its device copies go now, not when the error's traceback is dropped
        raise
    if resume is not None:
        resume.remove()
    return denormalize_latents(out)


def _last_prediction(state: SolverState) -> torch.Tensor:
    """The data prediction of a saved state's last step (what a render stopped there handed out)."""
    for key in ("x0_last", "prev_x0", "x0"):  # UniPC, DPM++, euler
        if key in state.history:
            return state.history[key]
    return state.x


def expert_phases(pair, steps: int, shift: float, sampler: str, denoise: float, cfg: float,
                  stop_after: int | None = None, start_step: int = 0) -> list[tuple[object, int, int, float]]:
    """The stretches of a pair render: ``(expert, first step, end step, cfg)`` for the high-noise expert's leading
    steps and the low-noise one's rest (one of them may be empty and is left out), from ``start_step`` to
    ``stop_after``."""
    schedule = build_schedule(sampler, steps, shift, denoise, pair.config.dim)
    switch, end = pair.switch_step(schedule.timesteps), stop_after or schedule.steps
    phases = [(pair.high, start_step, min(switch, end), cfg if pair.cfg_high is None else pair.cfg_high),
              (pair.low, max(switch, start_step), end, cfg if pair.cfg_low is None else pair.cfg_low)]
    return [phase for phase in phases if phase[1] < phase[2]]


def sample_pair(pair, context: torch.Tensor, negative: torch.Tensor | None = None, *, steps: int = 50,
                cfg: float = 5.0, shift: float = 5.0, sampler: str = "unipc", denoise: float = 1.0,
                render: RenderContext | Callable | None = None, stop_after: int | None = None,
                between: Callable[[object, object], None] | None = None, **rest) -> torch.Tensor:
    """:func:`sample` with an :class:`~wan_core.ExpertPair`: the high-noise expert's steps, then the low-noise
    expert's from the solver state the first stretch stopped with, so the result is that of one solver run that
    switches experts at the boundary (as the official loop does). render: one context for both, or
    ``render(expert) -> RenderContext``; between(previous, next): called at the switch, after the first expert's
    memory-mapped pages were given back to the system (:func:`~wan_core.runtime.file_pages.release_file_pages`).
    Other arguments as :func:`sample`."""
    if rest.get("first_frame") is not None:
        raise InputError("an expert pair takes no first_frame (that is the TI2V-5B model's image-to-video)")
    phases = expert_phases(pair, steps, shift, sampler, denoise, cfg, stop_after)
    state, out, latent = None, None, rest.pop("latent", None)
    for index, (expert, first, end, scale) in enumerate(phases):
        if index:
            release_file_pages(phases[index - 1][0])
            if between is not None:
                between(phases[index - 1][0], expert)
        kept: list[SolverState] = []
        last = index == len(phases) - 1
        context_for = render(expert) if callable(render) else render  # a RenderContext is not callable
        out = sample(expert, context, negative, steps=steps, cfg=scale, shift=shift, sampler=sampler,
                     denoise=denoise, render=context_for, latent=latent,
                     start_step=first, start_state=state, stop_after=end if not last else stop_after,
                     on_stop=None if last else kept.append, **rest)
        state = kept[0] if kept else None
    return out


def _check_start(start_step: int, start_state: SolverState | None, latent: torch.Tensor | None, denoise: float,
                 steps: int, shape: tuple[int, ...]) -> SolverState | None:
    """The solver state a render starting at ``start_step`` begins from (None: from noise at step 0), checked:
    the hand-over ``start_state`` of that step, or ``latent`` (RAW) as the noisy latent there, history afresh."""
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step < steps:
        raise InputError(f"start_step must be a whole number of steps below steps ({steps}), got {start_step!r}")
    if start_step == 0:
        if start_state is not None:
            raise InputError("a solver state to start from was given with start_step 0; give its step")
        return None
    if start_state is not None:
        if start_state.step != start_step or tuple(start_state.x.shape) != tuple(shape):
            raise InputError(f"the LATENT was stopped at step {start_state.step} with shape "
                             f"{tuple(start_state.x.shape)}; this sampler starts at step {start_step} with "
                             f"{tuple(shape)}: set start_step to {start_state.step} and the same size")
        return start_state
    if denoise != 1.0:
        raise InputError(f"start_step {start_step} continues a render part-way; denoise must be 1.0 (got {denoise})")
    if latent is None:
        raise InputError(f"start_step {start_step} needs a LATENT to continue (the output of a sampler stopped there)")
    return SolverState(start_step, normalize_latents(latent.float()))


def _retry_out_of_memory(make: Callable[[], Denoise], render: RenderContext) -> Denoise:
    """The denoiser ``make()`` returns; when an evaluation runs out of device memory, the render's plan is
    remade once with a smaller budget (:meth:`RenderContext.shrink_plan`) and the evaluation retried."""
    current = [make()]

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        try:
            return current[0](x, t)
        except torch.OutOfMemoryError:
            if render.parallel is not None or not render.shrink_plan():
                raise  # over several processes the ranks' calls must match: a rank out of memory ends the render
        current[0] = make()
        return current[0](x, t)

    return denoise


def _flush_quietly(resume: ResumeFile) -> None:
    try:
        resume.flush()
    except Exception as err:  # the render's own error is the one to report
        log.warning("the last resume checkpoint could not be written (%s)", err)


class _Stopped(Exception):
    """Raised between steps when a render reaches its ``stop_after`` step (carries the x0 prediction)."""

    def __init__(self, step: int, x0: torch.Tensor):
        super().__init__(step)
        self.step, self.x0 = step, x0


def _nonfinite_error(model, step: int, steps: int, render: RenderContext) -> WanCoreError:
    """Why a render went NaN / Inf at ``step``: a damaged weight (named), or an overflow of the compute dtype."""
    is_module = isinstance(model, torch.nn.Module)
    weights = nonfinite_parameters(model) if is_module else []
    if weights:
        return CheckpointError(f"the model's weights hold NaN/Inf ({', '.join(weights)}): the checkpoint file is "
                               "damaged; fetch it again")
    loras = ", ".join(f"{name} at {strength:g}" for name, strength in getattr(model, "loras", ()))
    patches = render.patches_for(model) if is_module else {}
    patched = nonfinite_patches(model, patches, render.dtype_for(model)) if patches else []
    if patched:
        return InputError(f"the LoRA updates ({loras or 'weight patches'}) make {', '.join(patched)} NaN/Inf in "
                          f"{render.dtype_for(model)}: their strength is too high for these weights; lower it")
    dtype = f" (compute dtype {render.dtype_for(model)})" if is_module else ""
    used = f"; LoRAs {loras}" if loras else ""
    return RenderError(f"the render produced NaN/Inf values at step {step + 1} of {steps} with valid inputs and "
                       f"weights{dtype}{used}; use bf16 or fp32 compute, a lower cfg, or other LoRAs")
