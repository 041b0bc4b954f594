"""``python -m wan_core t2v --prompt ... --out out.mp4``: a render without ComfyUI.

``--demo`` writes a tiny random model set once (see :mod:`wan_core.demo`) and renders with it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .constants import NEGATIVE_PROMPT
from .display import ProgressDisplay
from .errors import InputError, RenderError, WanCoreError
from .loading.shards import is_later_shard
from .manifest import MANIFEST_KEY, dumps
from .runtime.attention import attention_backends
from .runtime.cache_settings import CACHE_KINDS
from .runtime.placement import DTYPES
from .sampling.loop import SAMPLERS
from .sampling.settings import setting_help as tip
from .sampling.windows import FUSE_METHODS
from .sampling.windows import SCHEDULES as CONTEXT_SCHEDULES

log = logging.getLogger("wan_core.cli")

KINDS = {"dit": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"}
IMAGE_KINDS = {**KINDS, "clip_vision": "clip_vision"}
SUFFIXES = (".safetensors", ".pth", ".pt", ".gguf")
RESUME_FOLDER = ".wancore_resume"
"""The hidden folder beside --out where renders keep their resume files (one per render identity)."""


def _pick(models: Path, kind: str, name: str | None) -> Path:
    folder = models / IMAGE_KINDS[kind]
    if name:
        path = Path(name) if Path(name).is_absolute() else folder / name
        if not path.exists():
            raise WanCoreError(f"{kind} file {path} does not exist")
        return path
    found = sorted(p for p in folder.glob("*") if p.suffix in SUFFIXES and not is_later_shard(p.name)) \
        if folder.is_dir() else []
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise WanCoreError(f"pick the {kind} file with --{kind.replace('_', '-')} (found in {folder}: {listing}); "
                           "or render the tiny demo model with --demo")
    return found[0]


TASK_SHIFT = {"t2v": 5.0, "vace": 5.0, "i2v": 3.0, "flf2v": 16.0, "ti2v": 5.0}
"""The official shift of each task when the command line is not given one."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wan_core", description="Render Wan2.1 videos without ComfyUI.",
                                     epilog="Run 'python -m wan_core t2v --help' for a task's options and defaults.")
    sub = parser.add_subparsers(dest="task", required=True)
    for task, text in (("t2v", "text to video"), ("i2v", "image to video"), ("flf2v", "first and last frame to video"),
                       ("vace", "VACE: video from a control video, a mask and reference images"),
                       ("ti2v", "Wan2.2 TI2V-5B: text to video, or image to video with --image (24 fps)")):
        _add_common(sub.add_parser(task, help=text), task)
    replay = sub.add_parser("replay", help="render again from the run manifest stored in a video we wrote")
    replay.add_argument("video", type=Path, help="a video written by python -m wan_core")
    replay.add_argument("--models", type=Path, default=Path(os.environ.get("WANCORE_MODELS", "models")),
                        help="where to look for the model files by name or hash if they moved (default: ./models)")
    replay.add_argument("--out", type=Path, help="output file (default: <video>-replay with the same extension)")
    replay.add_argument("--device", help="cpu or cuda (default: the one recorded)")
    return parser


def _add_common(t2v: argparse.ArgumentParser, task: str) -> None:
    if task == "vace":
        t2v.add_argument("--control", type=Path, help="control video (depth, pose, edges, or a clip to keep parts "
                         "of); resized to the render size, continued with gray frames if shorter")
        t2v.add_argument("--mask", type=Path, help="mask video or image: white = generate, black = keep the "
                         "control's pixels (default: generate everything)")
        t2v.add_argument("--reference", type=Path, action="append", default=[],
                         help="a reference image (repeatable), fitted onto a white frame ahead of the video")
        t2v.add_argument("--vace-strength", type=float, default=1.0, help="strength of the VACE hints (default: 1)")
    if task in ("i2v", "flf2v"):
        t2v.add_argument("--image", required=True, type=Path, help="start frame (png / jpg / any image file)")
        t2v.add_argument("--clip-vision", help="file in clip_vision/ (default: the only one)")
    if task == "ti2v":
        t2v.add_argument("--image", type=Path, help="start frame: image to video (default: text to video)")
    if task == "flf2v":
        t2v.add_argument("--end-image", required=True, type=Path, help="last frame")
    t2v.add_argument("--prompt", required=True, help="what the video shows")
    t2v.add_argument("--negative", default=NEGATIVE_PROMPT, help="negative prompt (default: the official one)")
    t2v.add_argument("--out", required=True, type=Path,
                     help="output file; the extension picks the format: .mp4 (H.264), .webm (VP9), .gif, .mov "
                          "(ProRes 422), or no extension for a folder of PNG frames. An existing file is never "
                          "replaced (a -N suffix is added)")
    t2v.add_argument("--models", type=Path, default=Path(os.environ.get("WANCORE_MODELS", "models")),
                     help="models folder with diffusion_models/, text_encoders/, vae/ (default $WANCORE_MODELS "
                          "or ./models)")
    t2v.add_argument("--dit", help="file in diffusion_models/ (default: the only one); for Wan2.2 A14B the "
                     "high-noise expert, or a folder holding high_noise_model/ and low_noise_model/ (the official "
                     "release), which renders the pair")
    t2v.add_argument("--dit-low", help="Wan2.2 A14B: the low-noise expert (file or shard folder); --dit is then the "
                     "high-noise one and the two render as an expert pair")
    t2v.add_argument("--boundary", type=float, help="expert pair: the switch as a fraction of the timesteps "
                     "(default: the official 0.875 for t2v, 0.9 for i2v)")
    t2v.add_argument("--cfg-high", type=float, help="expert pair: guidance of the high-noise steps (default: official, "
                     "t2v 4.0, i2v 3.5; 1.0 for the Lightning LoRAs)")
    t2v.add_argument("--cfg-low", type=float, help="expert pair: guidance of the low-noise steps (default: official, "
                     "t2v 3.0, i2v 3.5)")
    t2v.add_argument("--lora-low", action="append", default=[], metavar="FILE[:STRENGTH]",
                     help="expert pair: a LoRA for the low-noise expert (--lora then goes on the high-noise one)")
    t2v.add_argument("--text-encoder", help="file in text_encoders/ (default: the only one)")
    t2v.add_argument("--vae", help="file in vae/ (default: the only one)")
    t2v.add_argument("--demo", action="store_true",
                     help="write and use a tiny random model set (renders noise, in seconds)")
    size = "(default: 832x480, 81 frames; 256x160, 17 frames with --demo)"
    t2v.add_argument("--width", type=int, help=f"pixels, a multiple of 16 {size}")
    t2v.add_argument("--height", type=int, help="pixels, a multiple of 16")
    t2v.add_argument("--frames", type=int, help="4n+1 frames (81 = 5 s at 16 fps)")
    t2v.add_argument("--steps", type=int, help=f"{tip('steps')} (default: 50 t2v, 40 i2v / flf2v and expert pairs, "
                     "8 with --demo)")
    t2v.add_argument("--cfg", type=float, help=f"{tip('cfg')} (default: 5.0; an expert pair uses --cfg-high / "
                     "--cfg-low)")
    t2v.add_argument("--shift", type=float, help=f"{tip('shift')} Use 5.0 for 720p i2v. (default: "
                     f"{TASK_SHIFT.get(task, 5.0)}; expert pairs: t2v 12, i2v 5)")
    t2v.add_argument("--sampler", default="unipc", choices=list(SAMPLERS), help=f"{tip('sampler')} (default: unipc)")
    t2v.add_argument("--seed", type=int, default=0, help=f"{tip('seed')} (default: 0)")
    fps = 24.0 if task == "ti2v" else 16.0
    t2v.add_argument("--fps", type=float, default=fps,
                     help=f"frames per second of the file, gif at most 50 (default: {fps:g})")
    t2v.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    t2v.add_argument("--storage-dtype", default="default", choices=list(DTYPES),
                     help="how the DiT and text encoder weights are held (default: as in the file)")
    t2v.add_argument("--resume", default="auto", choices=["auto", "off"],
                     help=f"{tip('resume')} The state is kept in {RESUME_FOLDER}/ beside --out, one file per render. "
                     "(default: auto)")
    t2v.add_argument("--stop-after", type=int, default=0,
                     help=f"{tip('stop_after')} The preview is written as <out>.step-N. (default: 0)")
    t2v.add_argument("--attention", default="sdpa", choices=attention_backends(), help=f"{tip('attention')} "
                     "(default: sdpa)")
    t2v.add_argument("--compile", action="store_true", help=tip("compile"))
    t2v.add_argument("--cache", default="off", choices=["off", *CACHE_KINDS],
                     help=f"{tip('cache')} mag (MagCache) and tea (TeaCache) use the published Wan2.1 tables. "
                          "(default: off)")
    t2v.add_argument("--cache-threshold", type=float,
                     help="higher reuses more steps; 0 never (default: the kind's published one: mag 0.12, tea "
                          "0.05 t2v 1.3B / 0.10 t2v 14B / 0.20 i2v, first_block 0.05)")
    t2v.add_argument("--cache-start", type=float,
                     help="share of the first steps that always run every block (default: mag 0.2, tea 0.1, "
                          "first_block 0.2)")
    t2v.add_argument("--cache-max-skips", type=int,
                     help="reused steps in a row at most (default: mag 2, tea no limit, first_block 3)")
    t2v.add_argument("--context-frames", type=int, metavar="N",
                     help=f"{tip('context')} N frames per window, 4n+1 (the native node's context_length; default: "
                     "no windows)")
    t2v.add_argument("--context-overlap", type=int, metavar="M", help="frames shared by neighbouring windows "
                     "(default 30: 8 latent frames)")
    t2v.add_argument("--context-schedule", choices=list(CONTEXT_SCHEDULES), help="static: the same windows at every "
                     "step (needed with --cache); uniform / looped: windows shifted at every step (looped wraps "
                     "around the end) (default: static)")
    t2v.add_argument("--context-fuse", choices=list(FUSE_METHODS), help="how overlapping windows blend: pyramid "
                     "(towards each window's middle), overlap-linear (a linear cross-fade over the overlap), flat "
                     "(a plain average) (default: pyramid)")
    t2v.add_argument("--context-stride", type=int, help="uniform / looped: also windows over every 2nd, 4th, ... "
                     "frame up to this stride (default: 1)")
    t2v.add_argument("--context-closed-loop", action="store_true", help="looped: windows also wrap from the end to "
                     "the start (a seamless loop)")
    t2v.add_argument("--extend-to", type=int, metavar="FRAMES", help="continue the clip in latent space to FRAMES "
                     "frames in all (4n+1; e.g. 321 = 20 s at 16 fps): segments of --extend-segment frames, each "
                     "conditioned on the last --extend-overlap frames before it, decoded once at the end")
    t2v.add_argument("--extend-overlap", type=int, default=16, metavar="N", help="frames each new segment carries "
                     "from the video before it, a multiple of 4 (default: 16)")
    t2v.add_argument("--extend-segment", type=int, metavar="N", help="frames per segment, carried ones included, "
                     "4n+1 (default: --frames)")
    t2v.add_argument("--extend-prompt", action="append", default=[], metavar="TEXT", help="the prompt of the next "
                     "new segment (repeatable, in order; the last serves the rest; default: --prompt)")
    t2v.add_argument("--parallel", type=_parallel_settings, metavar="ulysses=N,cfg=1|2",
                     help=f"{tip('parallel')} (default: one process)")
    t2v.add_argument("--vram-budget", type=float, default=0.0, metavar="GB",
                     help=f"{tip('vram_budget')} The reserve is 1 GiB. (default: 0)")
    t2v.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                     help="a LoRA for the diffusion model, from loras/ or a path, strength 1 unless given "
                          "(repeatable: the LoRAs add up)")
    t2v.add_argument("--keep-latent", action="store_true",
                     help="also save the raw latent as <out>.latent.safetensors (always done when decoding fails)")
    t2v.add_argument("--compute-dtype", choices=["fp32", "bf16", "fp16", "fp8"],
                     help="dtype of the matrix products (default: fp32 on CPU, bf16 on CUDA, fp16 for CLIP); fp8: "
                          "the diffusion model's blocks multiply fp8 weights in fp8 on GPUs with fp8 tensor cores "
                          "(RTX 40xx, L4, L40, H100; its weights are stored in fp8), bf16 around them")


def _demo_files_once(folder: Path) -> None:
    import torch.distributed as dist

    from .demo import write_demo_models
    from .parallel.launch import rank

    if rank() == 0:
        write_demo_models(folder)
    dist.barrier()


def _parallel_settings(text: str):
    from .parallel import ParallelSettings

    try:
        return ParallelSettings.parse(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"mp4": "mp4", "webm": "webm", "gif": "gif", "mov": "mov", "": "png"}.get(suffix, suffix)


def run(argv: list[str] | None = None) -> Path | None:
    """Parse ``argv``, check the whole render (files by their headers, sizes, settings, memory), then render
    and return the written path (None on the other ranks of a torchrun render). Nothing heavy is loaded before
    every check has passed."""
    args = _parser().parse_args(argv)
    if args.task == "replay":
        from .replay import replay_argv

        return run(replay_argv(args.video, args.models, args.out, args.device))
    from .parallel.launch import join_process_group, leave_process_group, rank

    joined = join_process_group(args.parallel, args.device)
    if rank():  # the other ranks of a torchrun render: warnings and errors only, no progress display
        logging.getLogger("wan_core").setLevel(logging.WARNING)
    try:
        if joined and args.demo:  # rank 0 writes the demo files, the others find them written
            _demo_files_once(args.models / "demo")
        plan = _plan(args)
        manifest = _manifest(args, plan)
        try:
            raw = _render_latent(args, plan, manifest)
        except RuntimeError as err:
            if joined and _collective_failed(err):
                raise RenderError(f"rank {rank()}: another rank of the parallel render stopped or failed "
                                  f"({str(err).splitlines()[0][:300]}); nothing was written, the resume file keeps "
                                  "the last finished step: run the same command again to go on") from err
            raise
        except KeyboardInterrupt as err:  # torchrun's SIGTERM: it ends the other ranks when one fails (or is stopped)
            if not joined:
                raise
            raise RenderError(f"rank {rank()}: torchrun stopped this rank (another rank of the parallel render stopped "
                              "or failed, or the launch itself was stopped); nothing was written, the resume file "
                              "keeps the last finished step: run the same command again to go on") from err
        if rank():  # every rank holds the same latent; rank 0 decodes, writes and names the file
            return None
        return _decode_and_write(args, plan, manifest, raw)
    finally:
        if joined:
            leave_process_group()


def _collective_failed(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective that broke (a rank died, a timeout), not a fault of this rank's own."""
    import torch.distributed as dist

    return isinstance(err, dist.DistError) or any(word in str(err) for word in ("gloo", "NCCL", "Connection"))


def _render_latent(args: argparse.Namespace, plan: _Plan, manifest: dict):
    """Render through the task's function (the engine's one render path) on the plan's host; the solver's state
    is kept beside ``--out`` after every step."""
    from . import image_to_latent, text_to_latent, vace_to_latent

    dit, text_encoder, vae, clip = _load_models(args, plan)
    texts = (args.prompt, args.negative)
    common = dict(settings=plan.settings, host=plan.host, manifest=manifest, **plan.size, extension=plan.extension,
                  segment_prompts=tuple(args.extend_prompt))
    if plan.images:
        end = plan.images[1] if len(plan.images) > 1 else None
        return image_to_latent(dit, text_encoder, vae, clip, plan.images[0], *texts, end=end, **common)
    if args.task == "vace":
        return vace_to_latent(dit, text_encoder, vae, *texts, **plan.vace, **common)
    return text_to_latent(dit, text_encoder, *texts, **common)


def _load_models(args: argparse.Namespace, plan: _Plan) -> tuple:
    """The DiT (with its LoRAs), the text encoder, the VAE and (i2v / flf2v) CLIP, by the placement policy: the DiT
    and the text encoder stay in host memory (memory-mapped) and are placed by their memory plans, computing in
    the render device's dtype (bf16 on CUDA unless told); the VAE and CLIP are stored in theirs in host memory and
    go to the device only for their stages, so that nothing but the DiT's plan is on it while sampling."""
    from . import (
        ExpertPair,
        apply_loras,
        default_compute_dtype,
        load_clip_vision,
        load_dit,
        load_text_encoder,
        load_vae,
    )

    device, fp8 = plan.host.device, args.compute_dtype == "fp8"
    chosen = None if fp8 else args.compute_dtype  # fp8: the DiT's blocks multiply in fp8, in its default dtype
    weights = dict(storage_dtype=args.storage_dtype, device="cpu",
                   compute_dtype=chosen or default_compute_dtype("dit", device))

    def stage(network: str) -> dict:  # held in host memory, in the dtype it computes in on the render device
        return dict(compute_dtype=chosen or default_compute_dtype(network, device), device="cpu")

    text_encoder = load_text_encoder(plan.paths["text_encoders"], **weights)
    dit = load_dit(plan.paths["diffusion_models"], **weights, fp8_matmul=fp8)
    if plan.loras:
        dit = apply_loras(dit, [(lora, strength) for lora, strength, _ in plan.loras])
    if "dit_low" in plan.paths:  # a Wan2.2 pair: both experts stay memory-mapped until their stretch places them
        low = load_dit(plan.paths["dit_low"], **weights, fp8_matmul=fp8)
        if plan.loras_low:
            low = apply_loras(low, [(lora, strength) for lora, strength, _ in plan.loras_low])
        dit = ExpertPair.with_defaults(dit, low, args.boundary, args.cfg_high, args.cfg_low)
    vae = plan.models["vae"] = load_vae(plan.paths["vae"], **stage("vae"))
    clip = load_clip_vision(plan.paths["clip_vision"], **stage("clip_vision")) \
        if plan.images and "clip_vision" in plan.paths else None
    return dit, text_encoder, vae, clip


def _decode_and_write(args: argparse.Namespace, plan: _Plan, manifest: dict, raw) -> Path:
    """Decode (in tiles if the whole does not fit) and write; the raw latent is kept on request, and always
    when the decode fails."""
    from . import decode_latent, video_to_images, write_video

    stopped = bool(args.stop_after) and args.stop_after < plan.settings.steps
    out = args.out.with_name(f"{args.out.stem}.step-{args.stop_after}{args.out.suffix}") if stopped else args.out
    if args.keep_latent:
        _keep_latent(raw, out, manifest)
    try:
        video = decode_latent(plan.models["vae"], raw, plan.host, "off")
    except BaseException:
        if not args.keep_latent:
            _keep_latent(raw, out, manifest)
        raise
    if stopped:
        log.warning("stopped after step %d of %d: %s is a preview of the final video; run the same command "
                    "without --stop-after to continue from there", args.stop_after, plan.settings.steps, out)
    metadata = {"prompt": args.prompt, MANIFEST_KEY: dumps(manifest)}
    return write_video(video_to_images(video), out, fps=args.fps, fmt=plan.fmt, metadata=metadata,
                       progress=plan.host.count("writing"))


def _keep_latent(raw, out: Path, manifest: dict) -> Path:
    """Save the RAW latent next to the output, atomically: ``<name>.latent.safetensors`` (nothing is left when
    it cannot be written)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from .files import check_writable_folder, output_failed, temporary_path

    path = out.with_name(f"{out.stem}.latent.safetensors")
    check_writable_folder(path.parent)
    temp = temporary_path(path)
    try:
        save_file({"latent": raw.detach().contiguous().cpu()}, temp, metadata={MANIFEST_KEY: dumps(manifest)})
        os.replace(temp, path)
    except (OSError, SafetensorError) as err:
        temp.unlink(missing_ok=True)
        raise output_failed(path, err) from err
    log.warning("raw latent kept at %s (decode it later with the VAE)", path)
    return path


def _manifest(args: argparse.Namespace, plan: _Plan) -> dict:
    """The run manifest of a CLI render (see :mod:`wan_core.manifest`)."""
    from .manifest import file_ref, versions

    names = (getattr(args, "image", None), getattr(args, "end_image", None))
    folders = IMAGE_KINDS if plan.images else KINDS
    return {
        "task": args.task, "prompt": args.prompt, "negative": args.negative, "demo": args.demo,
        "models": {kind: file_ref(_one_file(plan.paths[folder])) for kind, folder in
                   {**folders, "dit_low": "dit_low"}.items() if folder in plan.paths},
        "images": [file_ref(name) for name in names if name is not None],
        "fps": args.fps, **plan.size, **plan.settings.to_manifest(), "device": str(plan.host.device),
        "loras": [{"file": file_ref(path), "strength": strength} for _, strength, path in plan.loras],
        "loras_low": [{"file": file_ref(path), "strength": strength} for _, strength, path in plan.loras_low],
        "expert_pair": None if "dit_low" not in plan.paths else {
            "boundary": args.boundary, "cfg_high": args.cfg_high, "cfg_low": args.cfg_low},
        "vace": None if args.task != "vace" else {
            "control": None if args.control is None else file_ref(args.control),
            "mask": None if args.mask is None else file_ref(args.mask),
            "references": [file_ref(p) for p in args.reference], "strength": args.vace_strength},
        "extend": None if plan.extension is None else {
            "frames": plan.extension.frames, "overlap": plan.extension.overlap, "segment": plan.extension.segment,
            "prompts": list(args.extend_prompt)},
        "storage_dtype": args.storage_dtype, "compute_dtype": args.compute_dtype, "versions": versions(),
    }


@dataclass(frozen=True)
class _Plan:
    """A checked render: model files, size, settings, output format, host (its device and resume file), and the
    input images (i2v / flf2v)."""

    paths: dict[str, Path]
    size: dict[str, int]  # width, height, frames
    settings: object  # RenderSettings
    fmt: str
    host: object  # StandaloneHost
    images: tuple
    loras: tuple = ()  # (LoraFile, strength, path), checked against the DiT's config (a pair's high-noise expert)
    vace: dict = field(default_factory=dict)  # a vace render's control / mask / references and strength
    models: dict = field(default_factory=dict)  # filled as they load (the VAE, for the decode)
    loras_low: tuple = ()  # an expert pair's low-noise expert's LoRAs
    extension: object = None  # an Extension (--extend-to), or None


def _plan(args: argparse.Namespace) -> _Plan:
    """Every check that needs no weights: arguments, output, devices, file kinds and the DiT's config from
    its header, the model kind against the task, images, and the render's settings and memory."""
    import torch

    from . import RenderSettings, StandaloneHost, check_fps, read_image, resolve_placement, video_format
    from .demo import DEMO_SIZE, write_demo_models
    from .files import check_file_name, check_writable_folder
    from .loading.checkpoint import inspect_kind
    from .loading.dit import fp8_storage, inspect_dit
    from .models.experts import EXPERT_DEFAULTS
    from .parallel.launch import rank
    from .pipeline import check_task
    from .sampling.request import SampleRequest
    from .vace import vace_request

    image_task = args.task in ("i2v", "flf2v") or (args.task == "ti2v" and args.image is not None)
    fmt = video_format(_format_for(args.out)).value  # a bad extension fails now, not after the render
    check_fps(args.fps, fmt)
    check_file_name(args.out.absolute())
    check_writable_folder(args.out.absolute().parent)  # a folder that cannot take the video fails now
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but this machine has no usable CUDA device (or this torch "
                         "build has no CUDA); use --device cpu or install a CUDA build of torch")
    fp8 = args.compute_dtype == "fp8"
    placement = resolve_placement("dit", args.storage_dtype, None if fp8 else args.compute_dtype, device)
    defaults = {"width": 832, "height": 480, "frames": 81, "steps": 40 if image_task else 50}
    if args.task == "ti2v":  # the official TI2V-5B size: 1280x704, 121 frames (5 s at 24 fps)
        defaults = {"width": 1280, "height": 704, "frames": 121, "steps": 50}
    if args.demo:
        defaults = dict(DEMO_SIZE)
        paths = write_demo_models(args.models / "demo")
        if args.task != "t2v":
            paths["diffusion_models"] = paths[args.task]
        if args.task == "ti2v":
            paths["vae"] = paths["vae22"]
        log.warning("DEMO: tiny random weights; the video is structured noise, not a picture")
    else:
        paths = _dit_paths(args)
        clip = image_task and inspect_dit(paths["diffusion_models"]).has_image_branch  # Wan2.2 i2v: no CLIP
        kinds = IMAGE_KINDS if clip else KINDS
        paths.update({kinds[k]: _pick(args.models, k, getattr(args, k)) for k in kinds if k != "dit"})
    config = inspect_dit(paths["diffusion_models"])
    pair = "dit_low" in paths
    if pair:
        check_pair(config, inspect_dit(paths["dit_low"]), args)
        defaults["steps"] = 8 if args.demo else EXPERT_DEFAULTS[config.model_type]["steps"]
    size = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    shift = EXPERT_DEFAULTS[config.model_type]["shift"] if pair else TASK_SHIFT[args.task]
    settings = RenderSettings.from_args(args, steps=size.pop("steps"),
                                        shift=shift if args.shift is None else args.shift,
                                        cfg=5.0 if args.cfg is None else args.cfg)
    if fp8:
        fp8_storage(paths["diffusion_models"], args.storage_dtype)  # a GGUF file or bf16 storage fails now
    check_task(config, args.task)
    for kind, folder in (IMAGE_KINDS if image_task and config.has_image_branch else KINDS).items():
        if kind != "dit":
            inspect_kind(paths[folder], kind)
    check_vae_for(config, paths["vae"])
    names = (getattr(args, "image", None), getattr(args, "end_image", None))
    images = tuple(read_image(name) for name in names if name is not None)
    request = (vace_request(**size, references=len(args.reference)) if args.task == "vace"
               else SampleRequest(**size))
    settings.check_for(config, request.latent_shape(config), device, placement.compute_dtype)
    extension = _extension(args, size["frames"], request.latent_shape(config)[2])
    host = StandaloneHost(device, resume_folder=args.out.parent / RESUME_FOLDER, logger=log,
                          on_progress=_no_progress if rank() else ProgressDisplay(sys.stderr, log),
                          shares_text=args.parallel is not None)
    return _Plan(paths, size, settings, fmt, host, images, _loras(args, config, args.lora),
                 _vace_inputs(args), loras_low=_loras(args, config, args.lora_low), extension=extension)


def _extension(args: argparse.Namespace, frames: int, latent_count: int):
    """The --extend-* settings as an :class:`~wan_core.Extension` (None without --extend-to), checked against the
    clip's length; the other --extend-* flags alone are an error."""
    from .extend import Extension

    if args.extend_to is None:
        if args.extend_prompt or args.extend_segment is not None:
            raise InputError("--extend-prompt / --extend-segment continue a clip; give --extend-to FRAMES too")
        return None
    extension = Extension(args.extend_to, args.extend_overlap, args.extend_segment or frames)
    extension.segments(latent_count)  # a clip already longer fails now
    return extension


def check_vae_for(config, vae_path: Path) -> None:
    """The TI2V-5B model needs the Wan2.2 VAE and every other model the Wan2.1 one (read from the header)."""
    from .loading.checkpoint import open_state_dict
    from .loading.vae import WAN22_ENCODER_INPUT

    weight = open_state_dict(vae_path).get(WAN22_ENCODER_INPUT)
    wan22 = weight is not None and weight.shape[1] == 12
    if wan22 != (config.model_type == "ti2v"):
        want = "the Wan2.2 VAE (wan2.2_vae.safetensors)" if not wan22 else "the Wan2.1 VAE (wan_2.1_vae.safetensors)"
        raise InputError(f"{vae_path.name} is the Wan{'2.2' if wan22 else '2.1'} VAE, but {config.label} needs {want}; "
                         "pick it with --vae")


def _dit_paths(args: argparse.Namespace) -> dict[str, Path]:
    """``{"diffusion_models": the DiT}``, plus ``"dit_low"`` for a Wan2.2 pair (``--dit-low``, or ``--dit`` naming
    a folder with ``high_noise_model/`` and ``low_noise_model/``)."""
    dit = _pick(args.models, "dit", args.dit)
    if args.dit_low:
        return {"diffusion_models": dit, "dit_low": _pick(args.models, "dit", args.dit_low)}
    if dit.is_dir() and (dit / "high_noise_model").is_dir() and (dit / "low_noise_model").is_dir():
        return {"diffusion_models": dit / "high_noise_model", "dit_low": dit / "low_noise_model"}
    return {"diffusion_models": dit}


def check_pair(high, low, args: argparse.Namespace) -> None:
    """The two experts of a pair are of one architecture, made for the task; the pair's settings are valid."""
    from .pipeline import check_task

    if high != low:
        raise InputError(f"the two experts must be of one architecture; --dit is {high.label}, --dit-low "
                         f"{low.label}: give the high- and low-noise files of one Wan2.2 model")
    check_task(high, args.task)
    for name in ("boundary", "cfg_high", "cfg_low"):
        value = getattr(args, name)
        if value is not None and name == "boundary" and not 0 < value < 1:
            raise InputError(f"--boundary must be between 0 and 1 (official: 0.875 t2v, 0.9 i2v), got {value}")
        if value is not None and name != "boundary" and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1.0, got {value}")


def _one_file(path: Path) -> Path:
    """A model given as a folder of shards is recorded by its first shard (which loads them all)."""
    from .loading.shards import shard_files

    return shard_files(path)[0] if path.is_dir() else path


def _vace_inputs(args: argparse.Namespace) -> dict:
    """``--control`` / ``--mask`` / ``--reference`` read as IMAGE / MASK tensors (a vace render), before any
    model loads."""
    if args.task != "vace":
        return {}
    from .video import read_image, read_video

    def frames(path: Path):
        if not path.is_file():
            raise InputError(f"{path} does not exist; check the path")
        return read_video(path).images()

    import torch

    references = [read_image(p) for p in args.reference]
    inputs = {"references": torch.cat(references) if references else (), "vace_strength": args.vace_strength}
    if args.control is not None:
        inputs["control"] = frames(args.control)
    if args.mask is not None:
        inputs["mask"] = frames(args.mask).mean(dim=-1)  # gray levels: white = generate
    return inputs


def _loras(args: argparse.Namespace, config, specs: list[str]) -> tuple:
    """``--lora FILE[:STRENGTH]`` (``specs``) read and checked against the DiT (built on ``meta``: no weights) now,
    before any model loads."""
    import torch

    from .loading.lora import read_lora
    from .lora import check_lora_fits, check_lora_strength
    from .models.dit import WanDiT

    with torch.device("meta"):
        shape_model = WanDiT(config)
    out = []
    for spec in specs:
        name, _, strength = spec.rpartition(":")
        try:
            name, strength = (name, float(strength)) if name else (spec, 1.0)
        except ValueError:
            name, strength = spec, 1.0  # a ':' that is part of the path
        path = Path(name) if Path(name).is_absolute() or Path(name).is_file() else args.models / "loras" / name
        if not path.is_file():
            raise InputError(f"LoRA file {name} was found neither as a path nor in {args.models / 'loras'}")
        check_lora_strength(path, strength)
        lora = read_lora(path)
        check_lora_fits(lora, shape_model)
        out.append((lora, strength, path))
    return tuple(out)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (a job manager, `kill`) ends the render as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    from .display import BarAwareHandler

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        handlers=[BarAwareHandler(sys.stderr)])
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        path = run(argv)
    except WanCoreError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; nothing was written\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)  # a caller's own handler (main() run in-process) comes back
    if path is not None:
        sys.stdout.write(f"{path}\n")
    return 0
