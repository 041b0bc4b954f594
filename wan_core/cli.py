"""``python -m wan_core t2v --prompt ... --out out.mp4``: a render without ComfyUI.

``--demo`` writes a tiny random model set once (see :mod:`wan_core.demo`) and renders with it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from .constants import NEGATIVE_PROMPT
from .errors import InputError, WanCoreError
from .runtime.placement import DTYPES

log = logging.getLogger("wan_core.cli")

KINDS = {"dit": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"}
IMAGE_KINDS = {**KINDS, "clip_vision": "clip_vision"}
SUFFIXES = (".safetensors", ".pth", ".pt")


def _pick(models: Path, kind: str, name: str | None) -> Path:
    folder = models / IMAGE_KINDS[kind]
    if name:
        path = Path(name) if Path(name).is_absolute() else folder / name
        if not path.is_file():
            raise WanCoreError(f"{kind} file {path} does not exist")
        return path
    found = sorted(p for p in folder.glob("*") if p.suffix in SUFFIXES) if folder.is_dir() else []
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise WanCoreError(f"pick the {kind} file with --{kind.replace('_', '-')} (found in {folder}: {listing}); "
                           "or render the tiny demo model with --demo")
    return found[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wan_core", description="Render Wan2.1 videos without ComfyUI.",
                                     epilog="Run 'python -m wan_core t2v --help' for a task's options and defaults.")
    sub = parser.add_subparsers(dest="task", required=True)
    for task, text in (("t2v", "text to video"), ("i2v", "image to video"), ("flf2v", "first and last frame to video")):
        _add_common(sub.add_parser(task, help=text), task)
    return parser


def _add_common(t2v: argparse.ArgumentParser, task: str) -> None:
    if task != "t2v":
        t2v.add_argument("--image", required=True, type=Path, help="start frame (png / jpg / any image file)")
        t2v.add_argument("--clip-vision", help="file in clip_vision/ (default: the only one)")
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
    t2v.add_argument("--dit", help="file in diffusion_models/ (default: the only one)")
    t2v.add_argument("--text-encoder", help="file in text_encoders/ (default: the only one)")
    t2v.add_argument("--vae", help="file in vae/ (default: the only one)")
    t2v.add_argument("--demo", action="store_true",
                     help="write and use a tiny random model set (renders noise, in seconds)")
    size = "(default: 832x480, 81 frames; 256x160, 17 frames with --demo)"
    t2v.add_argument("--width", type=int, help=f"pixels, a multiple of 16 {size}")
    t2v.add_argument("--height", type=int, help="pixels, a multiple of 16")
    t2v.add_argument("--frames", type=int, help="4n+1 frames (81 = 5 s at 16 fps)")
    t2v.add_argument("--steps", type=int, help="denoising steps (default: 50 t2v, 40 i2v / flf2v, 8 with --demo)")
    t2v.add_argument("--cfg", type=float, default=5.0,
                     help="prompt strength; 1.0 skips the negative pass (default: 5.0)")
    t2v.add_argument("--shift", type=float, default=5.0 if task == "t2v" else 3.0 if task == "i2v" else 16.0,
                     help="schedule shift (default, as the official: 5.0 t2v, 3.0 480p i2v, 16 flf2v; use 5.0 "
                          "for 720p i2v)")
    t2v.add_argument("--sampler", default="unipc", choices=["unipc", "dpm++", "euler"], help="(default: unipc)")
    t2v.add_argument("--seed", type=int, default=0,
                     help="0 .. 2^64-1; the same seed renders the same on any device (default: 0)")
    t2v.add_argument("--fps", type=float, default=16.0,
                     help="frames per second of the file, gif at most 50 (default: 16)")
    t2v.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    t2v.add_argument("--storage-dtype", default="default", choices=list(DTYPES),
                     help="how the DiT and text encoder weights are held (default: as in the file)")
    t2v.add_argument("--compute-dtype", choices=["fp32", "bf16", "fp16"],
                     help="dtype of the matrix products (default: fp32 on CPU, bf16 on CUDA, fp16 for CLIP)")


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"mp4": "mp4", "webm": "webm", "gif": "gif", "mov": "mov", "": "png"}.get(suffix, suffix)


def run(argv: list[str] | None = None) -> Path:
    """Parse ``argv``, check the whole render (files by their headers, sizes, settings, memory), then render
    and return the written path. Nothing heavy is loaded before every check has passed."""
    from . import (
        RenderContext,
        image_to_video,
        load_clip_vision,
        load_dit,
        load_text_encoder,
        load_vae,
        text_to_video,
        video_to_images,
        write_video,
    )

    args = _parser().parse_args(argv)
    plan = _plan(args)
    weights = dict(storage_dtype=args.storage_dtype, compute_dtype=args.compute_dtype, device=plan.device)
    compute = dict(compute_dtype=args.compute_dtype, device=plan.device)  # VAE and CLIP store what they compute in
    text_encoder = load_text_encoder(plan.paths["text_encoders"], **weights)
    dit = load_dit(plan.paths["diffusion_models"], **weights)
    vae = load_vae(plan.paths["vae"], **compute)

    def progress(step: int, total: int, _x0) -> None:
        log.info("step %d/%d", step + 1, total)

    common = dict(seed=args.seed, cfg=args.cfg, shift=args.shift, sampler=args.sampler,
                  render=RenderContext(device=plan.device), callback=progress, **plan.size)
    if plan.images:
        clip = load_clip_vision(plan.paths["clip_vision"], **compute)
        video = image_to_video(dit, text_encoder, vae, clip, plan.images[0], args.prompt, args.negative,
                               end=plan.images[1] if len(plan.images) > 1 else None, **common)
    else:
        video = text_to_video(dit, text_encoder, vae, args.prompt, args.negative, **common)
    metadata = {"prompt": args.prompt, "wancore": f"seed {args.seed}, {plan.size}, sampler {args.sampler}"}
    return write_video(video_to_images(video), args.out, fps=args.fps, fmt=plan.fmt, metadata=metadata)


@dataclass(frozen=True)
class _Plan:
    """A checked render: model files, sizes, output format, device, and the input images (i2v / flf2v)."""

    paths: dict[str, Path]
    size: dict[str, int]
    fmt: str
    device: object
    images: tuple


def _plan(args: argparse.Namespace) -> _Plan:
    """Every check that needs no weights: arguments, output, devices, file kinds and the DiT's config from
    its header, the model kind against the task, images, and the render's settings and memory."""
    import torch

    from . import check_fps, check_render, read_image, resolve_placement, video_format
    from .demo import DEMO_SIZE, write_demo_models
    from .loading.checkpoint import inspect_kind
    from .loading.dit import inspect_dit
    from .pipeline import check_task
    from .sampling.request import SampleRequest
    from .video.paths import check_file_name

    image_task = args.task != "t2v"
    fmt = video_format(_format_for(args.out)).value  # a bad extension fails now, not after the render
    check_fps(args.fps, fmt)
    check_file_name(args.out.absolute())
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but this machine has no usable CUDA device (or this torch "
                         "build has no CUDA); use --device cpu or install a CUDA build of torch")
    placement = resolve_placement("dit", args.storage_dtype, args.compute_dtype, device)
    defaults = {"width": 832, "height": 480, "frames": 81, "steps": 40 if image_task else 50}
    if args.demo:
        defaults = DEMO_SIZE
        paths = write_demo_models(args.models / "demo")
        if image_task:
            paths["diffusion_models"] = paths[args.task]
        log.warning("DEMO: tiny random weights; the video is structured noise, not a picture")
    else:
        kinds = IMAGE_KINDS if image_task else KINDS
        paths = {kinds[k]: _pick(args.models, k, getattr(args, k)) for k in kinds}
    size = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    config = inspect_dit(paths["diffusion_models"])
    check_task(config, args.task)
    for kind, folder in (IMAGE_KINDS if image_task else KINDS).items():
        if kind != "dit":
            inspect_kind(paths[folder], kind)
    names = (getattr(args, "image", None), getattr(args, "end_image", None))
    images = tuple(read_image(name) for name in names if name is not None)
    request = SampleRequest(size["width"], size["height"], size["frames"])
    check_render(config, request.latent_shape(), seed=args.seed, steps=size["steps"], cfg=args.cfg,
                 shift=args.shift, sampler=args.sampler, device=device, compute_dtype=placement.compute_dtype)
    return _Plan(paths, size, fmt, device, images)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (a job manager, `kill`) ends the render as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        path = run(argv)
    except WanCoreError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; nothing was written\n")
        return 130
    sys.stdout.write(f"{path}\n")
    return 0
