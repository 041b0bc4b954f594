"""Render settings: everything a user chooses for one render, as one checked, frozen value.

The sampler node and the command line build a :class:`RenderSettings` from their inputs and flags, the
render job (:mod:`wan_core.job`) runs from it, and it is the settings part of the run manifest: the
manifest and the command line of a replay are made from its fields, and it is made again from them
(:meth:`RenderSettings.to_manifest` / :meth:`from_manifest`, :meth:`to_argv` / :meth:`from_args`), so no
front end lists the fields by hand. Each field carries its command-line flag and one help text that both
front ends show (CLI help, node tooltip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from ..errors import InputError
from ..parallel.groups import ParallelSettings
from ..runtime.attention import DEFAULT_ATTENTION, attention_backends
from ..runtime.cache_settings import StepCacheSettings
from .loop import check_render, check_sampler
from .request import check_number, check_settings
from .windows import ContextWindows

RESUME_MODES = ("auto", "off")
VALUE, SWITCH, CACHE, CONTEXT = "value", "switch", "cache", "context"
"""How a field is written on the command line: ``--flag VALUE``, a ``--flag`` switch, the cache flags or the
context-window flags."""
CONTEXT_FLAGS = {"frames": "--context-frames", "overlap": "--context-overlap", "schedule": "--context-schedule",
                 "fuse": "--context-fuse", "stride": "--context-stride"}
"""The context-window flags per field of :class:`~.windows.ContextWindows` (closed_loop: ``--context-closed-loop``)."""


def _setting(default, flag: str | None, help: str, kind: str = VALUE):
    """A settings field: its default, its command-line flag (None: no flag, see ``help``) and its help text."""
    return field(default=default, metadata={"flag": flag, "help": help, "kind": kind})


@dataclass(frozen=True)
class RenderSettings:
    """The choices of one render (not its size: that is the :class:`~.request.SampleRequest`); checked when made."""

    sampler: str = _setting("unipc", "--sampler", "unipc (the official default) and dpm++ are 2nd-order multistep "
                            "solvers; euler is the simple 1st-order one. lightx2v_4step (4 steps, shift 5) and causvid "
                            "(14B: up to 9 steps; 1.3B: 4; shift unused) are the schedules the step-distill LoRAs are "
                            "trained for: use them with such a LoRA at cfg 1.")
    steps: int = _setting(50, "--steps", "Denoising steps (official: 50 for t2v, 40 for i2v / flf2v). Fewer is "
                          "faster and softer. The fixed-step samplers take only their own counts: lightx2v_4step "
                          "exactly 4, causvid 4 on 1.3B and 1 to 9 on 14B.")
    cfg: float = _setting(5.0, "--cfg", "Prompt strength. 1.0 skips the negative pass (twice as fast); 5.0 is the "
                          "official default.")
    shift: float = _setting(5.0, "--shift", "Schedule shift: higher spends more steps on composition (official: "
                            "5.0; 3.0 for 480p i2v, 16 for flf2v).")
    seed: int = _setting(0, "--seed", "Noise seed, 0 .. 2^64-1; the noise is drawn on the CPU, so a seed renders the "
                         "same on any device.")
    denoise: float = _setting(1.0, None, "1.0 renders from noise; below 1 keeps that much of the start latent's "
                              "structure less (video-to-video; the command line renders from noise only).")
    stop_after: int = _setting(0, "--stop-after", "Stop after this many steps and hand out the prediction of the "
                               "final latent (a preview), keeping the state to continue; 0: run all steps.")
    start_step: int = _setting(0, None, "Start at this step from the LATENT given (a sampler stopped there with "
                               "stop_after: the same render goes on exactly; another LATENT is taken as the noisy "
                               "latent at that step). For two samplers wired by hand, e.g. Wan2.2's high-noise "
                               "expert then its low-noise one; 0: from noise.")
    cache: StepCacheSettings | None = _setting(None, "--cache", "A step cache: at steps where the model would barely "
                                               "change the result, its last contribution is reused instead of "
                                               "computed (faster, slightly different).", CACHE)
    attention: str = _setting(DEFAULT_ATTENTION, "--attention", "Attention kernel: sdpa (PyTorch, everywhere), flash "
                              "(flash-attn) or sage (SageAttention) on CUDA GPUs in fp16 / bf16, auto (the fastest "
                              "that can run). One that cannot run here falls back to sdpa (logged).")
    compile: bool = _setting(False, "--compile", "Compile the transformer blocks with torch.compile: the first "
                             "render at a size pays a compile (minutes), later ones (other seeds, prompts, step "
                             "counts) reuse it.", SWITCH)
    vram_budget: float = _setting(0.0, "--vram-budget", "Device memory this render may use, in GiB; 0: automatic "
                                  "(the free memory less a reserve). Blocks that do not fit stream from system "
                                  "memory, CFG branches run one at a time and the feed-forward in chunks as needed; "
                                  "the plan shows in the log.")
    resume: str = _setting("auto", "--resume", "auto: save the sampler's state after every step, so the same render "
                           "started again after a crash or a cancel continues from the last finished step with the "
                           "same result; off: always start fresh.")
    # the slots of the capabilities that plug into this one render path next; until they land only None is valid
    experts: None = _setting(None, None, "Wan2.2 expert-pair settings (boundary, cfg per expert); not in this version.")
    context: ContextWindows | None = _setting(None, "--context-frames", "Context windows for long videos: every step "
                                              "denoises overlapping windows of this many frames (81: the models' "
                                              "own length) and blends them, so memory grows with the window, not "
                                              "with the video.", CONTEXT)
    parallel: ParallelSettings | None = _setting(None, "--parallel", "Several processes (GPUs) for one render, "
                                                 "launched by torchrun: ulysses=N ranks share the video tokens, cfg=2 "
                                                 "splits the two CFG branches (N x 2 processes), e.g. ulysses=4,cfg=2.")

    def __post_init__(self) -> None:
        check_settings(self.seed, self.steps, self.cfg, self.shift, self.denoise)
        check_sampler(self.sampler, self.denoise)
        if isinstance(self.stop_after, bool) or not isinstance(self.stop_after, int) or self.stop_after < 0:
            raise InputError(f"stop_after must be a whole number of steps (0: run to the end), got {self.stop_after!r}")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or \
                not 0 <= self.start_step < self.steps or (self.stop_after and self.stop_after <= self.start_step):
            raise InputError(f"start_step must be a whole number of steps below steps ({self.steps}) and below "
                             f"stop_after when that is set, got {self.start_step!r}")
        if self.cache is not None and not isinstance(self.cache, StepCacheSettings):
            raise InputError(f"cache must be step cache settings (or none), got {type(self.cache).__name__}")
        if self.attention not in attention_backends():
            names = ", ".join(attention_backends())
            raise InputError(f"attention {self.attention!r} is unknown; choose one of {names}")
        if not isinstance(self.compile, bool):
            raise InputError(f"compile must be true or false, got {self.compile!r}")
        check_number("vram_budget", self.vram_budget, 0.0, fix="it is in GiB; 0 is automatic")
        if self.resume not in RESUME_MODES:
            raise InputError(f"resume must be one of {', '.join(RESUME_MODES)}, got {self.resume!r}")
        if self.context is not None and not isinstance(self.context, ContextWindows):
            raise InputError(f"context must be context-window settings (or none), got {type(self.context).__name__}")
        if self.parallel is not None and not isinstance(self.parallel, ParallelSettings):
            raise InputError(f"parallel must be parallel settings (or none), got {type(self.parallel).__name__}")
        if self.parallel is not None and self.parallel.cfg == 2 and self.cache is not None:
            raise InputError("a step cache decides per CFG branch, and with cfg=2 the branches' ranks would keep "
                             "(and resume) different states: use the cache with ulysses only (cfg=1), or no cache")
        for slot in ("experts",):
            if getattr(self, slot) is not None:
                raise InputError(f"{slot} settings are not supported by this version of wan_core; leave them unset")

    # --- what the render loop takes

    def sample_args(self) -> dict:
        """The keyword arguments of :func:`~wan_core.sample` that come from the settings."""
        return dict(seed=self.seed, steps=self.steps, cfg=self.cfg, shift=self.shift, sampler=self.sampler,
                    denoise=self.denoise)

    def check_for(self, config, latent_shape: tuple[int, ...], device: torch.device | str = "cpu",
                  compute_dtype: torch.dtype = torch.float32, available: int | None = None):
        """Everything these settings mean for a model (its ``config``, None for a stand-in) rendering
        ``latent_shape`` on ``device``: the schedule, the size and the memory (of one window's model call with
        context windows) against ``available`` bytes (None: the device's free memory now;
        :func:`~.loop.check_render`)."""
        if self.parallel is not None and config is not None:
            self.parallel.check_for(config.num_heads, None)
        return check_render(config, latent_shape, **self.sample_args(), device=device, compute_dtype=compute_dtype,
                            available=available, windows=self.context)

    def budget_bytes(self) -> int | None:
        """The memory budget in bytes, or None (automatic)."""
        return int(self.vram_budget * 2**30) if self.vram_budget > 0 else None

    # --- the manifest and the command line

    def to_manifest(self) -> dict:
        """Every field, JSON-ready (the step cache as its own dict)."""
        return {f.name: _encode(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_manifest(cls, manifest: dict) -> RenderSettings:
        """The settings a manifest recorded (a field it lacks, from an older version, takes its default)."""
        if not isinstance(manifest, dict):
            raise InputError(f"the manifest's settings must be a mapping, got {type(manifest).__name__}")
        values = {f.name: manifest[f.name] for f in fields(cls) if f.name in manifest}
        if values.get("cache") is not None:
            values["cache"] = _cache_from(values["cache"])
        if values.get("context") is not None:
            values["context"] = _context_from(values["context"])
        if values.get("parallel") is not None:
            values["parallel"] = _parallel_from(values["parallel"])
        return cls(**values)

    def to_argv(self) -> list[str]:
        """The command-line flags that give these settings (:meth:`from_args` reads them back)."""
        argv = []
        for f in fields(self):
            value, flag, kind = getattr(self, f.name), f.metadata["flag"], f.metadata["kind"]
            if flag is None:
                if value != f.default:
                    raise InputError(f"{f.name} {value!r} cannot be given on the command line ({f.metadata['help']})")
            elif kind == SWITCH:
                argv += [flag] if value else []
            elif kind == CACHE:
                argv += [] if value is None else _cache_argv(value)
            elif kind == CONTEXT:
                argv += [] if value is None else _context_argv(value)
            else:
                argv += [] if value is None else [flag, str(value)]  # None: not given (parallel)
        return argv

    @classmethod
    def from_args(cls, args, **overrides) -> RenderSettings:
        """The settings of parsed command-line ``args`` (an argparse namespace), with ``overrides`` (values the
        command line resolves itself, e.g. a task's default step count)."""
        values = {}
        for f in fields(cls):
            flag, kind = f.metadata["flag"], f.metadata["kind"]
            if flag is None:
                continue
            value = getattr(args, _dest(flag))
            if value is None and kind == VALUE:
                continue  # not given: the override or the field's default
            if kind == CACHE:
                value = None if value in (None, "off") else StepCacheSettings(
                    value, args.cache_threshold, args.cache_start, args.cache_max_skips)
            if kind == CONTEXT:
                value = _context_from_args(args)
            values[f.name] = bool(value) if kind == SWITCH else value
        return cls(**{**values, **overrides})

def setting_help(name: str) -> str:
    """The help text of a settings field (the CLI's help and the node's tooltip)."""
    return next(f.metadata["help"] for f in fields(RenderSettings) if f.name == name)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _encode(value):
    return asdict(value) if isinstance(value, (StepCacheSettings, ContextWindows, ParallelSettings)) else value


def _parallel_from(value) -> ParallelSettings:
    try:
        return ParallelSettings(**value)
    except TypeError as err:
        raise InputError(f"the manifest's parallel settings {value!r} are damaged ({err})") from err


def _context_from(value) -> ContextWindows:
    try:
        return ContextWindows(**value)
    except TypeError as err:
        raise InputError(f"the manifest's context-window settings {value!r} are damaged ({err})") from err


def _context_argv(context: ContextWindows) -> list[str]:
    """The ``--context-*`` flags of ``context`` (every field, so a replay does not depend on the defaults)."""
    argv = []
    for name, flag in CONTEXT_FLAGS.items():
        argv += [flag, str(getattr(context, name))]
    return argv + (["--context-closed-loop"] if context.closed_loop else [])


def _context_from_args(args) -> ContextWindows | None:
    """Context windows from the ``--context-*`` flags (None without ``--context-frames``); a flag given alone is
    an error, not ignored."""
    given = {name: getattr(args, _dest(flag), None) for name, flag in CONTEXT_FLAGS.items()}
    closed = bool(getattr(args, "context_closed_loop", False))
    if given["frames"] is None:
        stray = [CONTEXT_FLAGS[n] for n, v in given.items() if v is not None] + (["--context-closed-loop"] * closed)
        if stray:
            raise InputError(f"{', '.join(stray)} set context windows up; give --context-frames N too (81: the "
                             "models' own length)")
        return None
    return ContextWindows(**{k: v for k, v in given.items() if v is not None}, closed_loop=closed)


def _cache_from(value) -> StepCacheSettings:
    try:
        return StepCacheSettings(**value)
    except TypeError as err:
        raise InputError(f"the manifest's cache settings {value!r} are damaged ({err})") from err


def _cache_argv(cache: StepCacheSettings) -> list[str]:
    """``--cache KIND`` and the cache's settings that are set (unset ones take the published default again)."""
    argv = ["--cache", cache.kind]
    for key in ("threshold", "start", "max_skips"):
        value = getattr(cache, key)
        if value is not None:
            argv += [f"--cache-{key.replace('_', '-')}", str(value)]
    return argv
