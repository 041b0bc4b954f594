"""``python -m wan_core replay VIDEO``: the command line of a render, rebuilt from its run manifest.

Model and image files are found at their recorded paths, or by name or by size and fast hash under
``--models``; a file that cannot be found, or whose hash changed, is an error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError
from .manifest import find_file, read_manifest
from .sampling.settings import RenderSettings

FOLDERS = {"dit": "diffusion_models", "dit_low": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae",
           "clip_vision": "clip_vision"}
OUTPUT = ("width", "height", "frames", "fps", "storage_dtype")
"""What a CLI manifest records beside the render settings (which it holds whole, see :class:`RenderSettings`)."""


def replay_argv(video: str | os.PathLike, models: Path, out: Path | None, device: str | None) -> list[str]:
    """The CLI arguments that render ``video`` again (to ``out``, default ``<video>-replay<ext>``) with the
    recorded settings, keeping the raw latent so the two renders can be compared."""
    manifest = read_manifest(video)
    video = Path(video)
    if not isinstance(manifest, dict):
        raise InputError(f"{video}: its run manifest is a JSON {type(manifest).__name__}, not the mapping a render "
                         "writes; the file's metadata was changed, so it cannot be replayed")
    task = manifest.get("task")
    if "graph" in manifest:
        raise InputError(f"{video} was written inside ComfyUI: drop it onto the ComfyUI canvas to load its workflow "
                         "and queue it again (its manifest lists the model files and their hashes to check against)")
    if task not in ("t2v", "i2v", "flf2v", "vace"):
        raise InputError(f"{video}: its manifest names task {task!r}; replay knows t2v, i2v, flf2v and vace")
    _check_fields(video, manifest)
    out = out or video.with_name(f"{video.stem}-replay{video.suffix}")
    # --flag=value: a prompt that starts with '-' is never read as a flag
    argv = [task, f"--prompt={manifest['prompt']}", f"--negative={manifest['negative']}", "--out", str(out),
            "--models", str(models), "--device", device or manifest.get("device", "cpu"), "--keep-latent"]
    for key in OUTPUT:
        argv += [f"--{key.replace('_', '-')}", str(manifest[key])]
    if manifest.get("compute_dtype"):
        argv += ["--compute-dtype", manifest["compute_dtype"]]
    argv += RenderSettings.from_manifest(manifest).to_argv()  # every setting, as recorded
    for flag, key in (("--lora", "loras"), ("--lora-low", "loras_low")):
        for lora in manifest.get(key, []):
            argv += [flag, f"{find_file(lora['file'], models / 'loras')}:{lora['strength']}"]
    for key, value in (manifest.get("expert_pair") or {}).items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    if manifest.get("demo"):
        argv.append("--demo")  # the demo models are written again, identical, under --models/demo
    else:
        for kind, ref in manifest["models"].items():
            argv += [f"--{kind.replace('_', '-')}", str(find_file(ref, models / FOLDERS[kind]))]
    for flag, ref in zip(("--image", "--end-image"), manifest.get("images", [])):
        argv += [flag, str(find_file(ref, Path.cwd()))]
    extend = manifest.get("extend")
    if extend:
        argv += ["--extend-to", str(extend["frames"]), "--extend-overlap", str(extend["overlap"]),
                 "--extend-segment", str(extend["segment"])]
        argv += [f"--extend-prompt={text}" for text in extend.get("prompts", [])]
    vace = manifest.get("vace")
    if vace:
        argv += ["--vace-strength", str(vace["strength"])]
        for flag in ("control", "mask"):
            if vace.get(flag):
                argv += [f"--{flag}", str(find_file(vace[flag], Path.cwd()))]
        for ref in vace.get("references", []):
            argv += ["--reference", str(find_file(ref, Path.cwd()))]
    return argv


REQUIRED = {"prompt": str, "negative": str, "models": dict, **{key: (int, float, str) for key in OUTPUT}}
"""What a CLI manifest must hold to be replayed, with the types it holds them in."""


def _check_fields(video: Path, manifest: dict) -> None:
    """:class:`InputError` naming the first field a manifest lacks or holds in the wrong type, and each model
    file reference that is not a file reference."""
    for key, kind in REQUIRED.items():
        if key not in manifest:
            raise InputError(f"{video}: its run manifest has no {key!r}; it cannot be replayed")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise InputError(f"{video}: its run manifest's {key!r} is {manifest[key]!r}, not what a render "
                             "writes; it cannot be replayed")
    loras, images = manifest.get("loras", []), manifest.get("images", [])
    if not isinstance(loras, list) or not isinstance(images, list):
        raise InputError(f"{video}: its run manifest's loras / images are not lists; it cannot be replayed")
    refs = [*manifest["models"].values(), *images,
            *[lora.get("file") if isinstance(lora, dict) else lora for lora in loras]]
    for ref in refs:
        if not isinstance(ref, dict) or not {"name", "path", "size", "hash"} <= set(ref):
            raise InputError(f"{video}: its run manifest names a file as {ref!r}, without the name, path, size "
                             "and hash a render records; it cannot be replayed")
