"""The only module that touches ComfyUI: model folders, devices, memory, interrupts, progress, outputs.

Inside ComfyUI it uses ``folder_paths``, ``comfy.model_management`` and ``comfy.utils``. Without
ComfyUI (tests, scripts) it falls back to plain local behaviour: models under
``$WANCORE_MODELS/<kind>/`` (default ``./models``), inputs / outputs under ``$WANCORE_INPUT`` /
``$WANCORE_OUTPUT`` (default ``./input`` / ``./output``), CUDA when present, no-op progress and an
interrupt flag (:data:`interrupt_event`) that a caller may set.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from ..wan_core import (
    RenderInterrupted,
    available_bytes,
    is_later_shard,
    latent_preview,
    log_progress,
    module_bytes,
    preview_side,
    render_parallel,
    shutdown_pool,
)

try:  # ComfyUI's services exist only inside a ComfyUI process
    import comfy.model_management as _mm
    import comfy.utils as _utils
    import folder_paths as _folders
except ImportError:
    _mm = _utils = _folders = None

log = logging.getLogger(__name__)

IN_COMFYUI = _folders is not None
MODEL_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin", ".gguf")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v")

interrupt_event = threading.Event()
"""Standalone interrupt flag (inside ComfyUI its own interrupt button is used)."""


class HostError(Exception):
    """A file or folder the node needs is missing; the message says where it was looked for."""


HostError.__module__ = "wancore_nodes"  # shown by ComfyUI as "wancore_nodes.HostError", whatever the pack's folder


def _local(var: str, default: str) -> Path:
    return Path(os.environ.get(var, default))


def list_models(kind: str) -> list[str]:
    """Model file names of a folder kind (``diffusion_models``, ``text_encoders``, ``vae`` ...); of a sharded
    checkpoint only its first shard, which loads them all."""
    return [name for name in _model_names(kind) if not is_later_shard(name)]


def _model_names(kind: str) -> list[str]:
    if IN_COMFYUI:
        names = set(_folders.get_filename_list(kind))
        if kind == "diffusion_models":  # GGUF DiTs (models/diffusion_models and models/unet), unregistered in ComfyUI
            for folder in _folders.get_folder_paths(kind):
                root = Path(folder)
                if root.is_dir():
                    names.update(str(p.relative_to(root)) for p in root.rglob("*.gguf"))
        return sorted(names)
    root = _local("WANCORE_MODELS", "models") / kind
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in MODEL_SUFFIXES)


def _inside(path: Path, roots: list, what: str, name: str) -> Path:
    """``path`` if its name keeps it inside one of ``roots`` (no ``..`` or absolute name escapes); else a
    :class:`HostError`. Checked on the names, not on link targets: a link the user put into a models or
    input folder (to another disk, say) is theirs to follow."""
    lexical = Path(os.path.normpath(os.path.abspath(path)))
    folders = [Path(os.path.normpath(os.path.abspath(root))) for root in roots]
    if not any(lexical == f or f in lexical.parents for f in folders):
        raise HostError(f"{what} {name!r} leads outside its folder ({', '.join(str(f) for f in folders)}); "
                        "pick a file inside it")
    return lexical


def model_path(kind: str, name: str) -> Path:
    """The file ``name`` of a model folder kind; it must lie inside that kind's folders."""
    if IN_COMFYUI:
        return _inside(Path(_folders.get_full_path_or_raise(kind, name)), _folders.get_folder_paths(kind),
                       "model file", name)
    root = _local("WANCORE_MODELS", "models") / kind
    path = _inside(root / name, [root], "model file", name)
    if not path.is_file():
        raise HostError(f"model file {name!r} is not in {root}; put it there or set WANCORE_MODELS")
    return path


def output_directory() -> Path:
    return Path(_folders.get_output_directory()) if IN_COMFYUI else _local("WANCORE_OUTPUT", "output")


def resume_folder() -> Path:
    """Where sampler nodes keep resume files, one per render identity: in the output folder (ComfyUI empties
    its temp folder at start)."""
    return output_directory() / "wancore_resume"


def input_directory() -> Path:
    return Path(_folders.get_input_directory()) if IN_COMFYUI else _local("WANCORE_INPUT", "input")


def list_input_videos() -> list[str]:
    root = input_directory()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


def input_path(name: str) -> Path:
    """An input file by name (ComfyUI's ``[output]`` / ``[temp]`` annotations allowed); never outside those folders."""
    if IN_COMFYUI:
        roots = [_folders.get_input_directory(), _folders.get_output_directory(), _folders.get_temp_directory()]
        return _inside(Path(_folders.get_annotated_filepath(name)), roots, "input file", name)
    return _inside(input_directory() / name, [input_directory()], "input file", name)


def compute_device() -> torch.device:
    if IN_COMFYUI:
        return _mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_count() -> int:
    """GPUs this machine has (the parallel node's workers go on the ones besides the compute device)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def render_parallel_job(job, spec, on_stop=None) -> torch.Tensor:
    """``job`` over the devices of ``spec``: this process as rank 0 on the node host, the pool's workers on the
    others (started once, kept until ComfyUI unloads its models)."""
    return render_parallel(job, HOST, spec, on_stop)


def _end_workers_with_unload() -> None:
    """ComfyUI's *Unload models* button and ``POST /free`` (and its recovery from running out of memory) call
    ``unload_all_models``: the parallel workers end there too, giving their GPUs' memory back."""
    unload = _mm.unload_all_models
    if getattr(unload, "wancore_ends_workers", False):
        return

    def unload_all_models(*args, **kwargs):
        shutdown_pool()
        return unload(*args, **kwargs)

    unload_all_models.wancore_ends_workers = True
    _mm.unload_all_models = unload_all_models


if IN_COMFYUI:
    _end_workers_with_unload()


def offload_device() -> torch.device:
    """Where our models wait between stages: host memory. ComfyUI's offload device is the GPU under
    ``--gpu-only`` / ``--highvram``; our weights still load to host memory there, so that the memory plan (which
    keeps on the GPU whatever fits) decides placement, not the load."""
    if not IN_COMFYUI:
        return torch.device("cpu")
    device = torch.device(_mm.unet_offload_device())
    return torch.device("cpu") if device.type != "cpu" else device


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` for activations."""
    if IN_COMFYUI:
        return int(_mm.get_free_memory(device))
    return available_bytes(device)


def make_room(device: torch.device, nbytes: int, keep: list | None = None) -> None:
    """Inside ComfyUI: ask its model manager to unload models (ours included, except those in ``keep``) until
    ``nbytes`` and its reserve are free on ``device``; standalone nothing (there is no one to ask)."""
    if IN_COMFYUI and torch.device(device).type != "cpu":
        _mm.free_memory(nbytes + _mm.extra_reserved_memory(), device, keep_loaded=keep or [])


def release_memory() -> None:
    if IN_COMFYUI:
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def _weights_bytes(model) -> int:
    """Bytes of a model's weights: an ``nn.Module``'s, or the module a wrapper (the text encoder) holds."""
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "model", None)
    return module_bytes(module) if isinstance(module, torch.nn.Module) else 0


@contextmanager
def on_compute_device(*models):
    """Move ``models`` (anything with ``.to``) to the compute device for the block, after asking ComfyUI's model
    manager for room for their weights (a DiT it holds from the last run leaves the device first), then back to
    the offload device and free cached memory, also when the block fails or is interrupted."""
    device = compute_device()
    make_room(device, sum(_weights_bytes(model) for model in models))
    for model in models:
        model.to(device)
    try:
        yield device
    finally:
        for model in models:
            model.to(offload_device())
        release_memory()


def vram_budget(model, device: torch.device, requested_gb: float, need: int = 0) -> int | None:
    """Bytes a render may place on ``device``: the user's ``requested_gb``, or (0) automatic: inside ComfyUI, after
    asking its model manager to make room for ``need`` bytes (the whole model and its render; it unloads other
    models), ComfyUI's free-memory figure plus what we already hold of ``model`` there, less ComfyUI's reserve
    (``--reserve-vram``); standalone, None (the planner's own default: free memory less 1 GiB)."""
    if requested_gb and requested_gb > 0:
        return int(requested_gb * 2**30)
    device = torch.device(device)
    if not IN_COMFYUI or device.type == "cpu":
        return None
    held = _held.get(_weights_key(model))
    ours = held.loaded if held is not None and held.load_device == device else 0
    make_room(device, max(0, need - ours), [_mm.LoadedModel(held)] if ours else [])
    return max(0, int(_mm.get_free_memory(device)) + ours - int(_mm.extra_reserved_memory()))


def report(line: str) -> None:
    """A line for the user: ComfyUI's console (its log) and ours."""
    log.info(line)


@contextmanager
def placed_per_render(device: torch.device, model=None):
    """The render places what it needs itself (a streaming plan's view of ``model``, whose weights are taken off
    the device first if an earlier render left them there); afterwards cached memory is freed, also when the
    render fails or is interrupted."""
    if model is not None:
        unload(model)
    try:
        yield device
    finally:
        release_memory()


def _weights_key(model) -> int:
    """One key for a model and every handle sharing its weights (LoRA handles share the module tree)."""
    return id(getattr(model, "_modules", model))


class _Held:
    """What ComfyUI's model manager sees of a model of ours that stays on its device between queue runs: the
    parts of a ``ModelPatcher`` it calls (sizes, load, unload). ComfyUI unloads it (:meth:`detach`) when
    another model needs the memory and when the user presses "Unload models" (POST /free)."""

    parent = None

    def __init__(self, model, load_device: torch.device, offload_device: torch.device):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.size, self.loaded = module_bytes(model), 0

    def model_size(self) -> int:
        return self.size

    def loaded_size(self) -> int:
        return self.loaded

    def current_loaded_device(self) -> torch.device:
        return self.load_device if self.loaded else self.offload_device

    def model_dtype(self) -> torch.dtype:
        return getattr(self.model, "compute_dtype", torch.float32)

    def model_patches_to(self, _device_or_dtype) -> None:
        return None

    def model_patches_models(self) -> list:
        return []

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def lowvram_patch_counter(self) -> int:
        return 0

    def partially_load(self, device, extra_memory=0, force_patch_weights=False) -> int:
        """Place the whole model (our planner decided it fits); returns the bytes newly placed."""
        if self.loaded:
            return 0
        self.model.to(device)
        self.loaded = self.size
        return self.size

    def partially_unload(self, device, memory_to_free=0) -> int:
        return 0  # all or nothing: ComfyUI then unloads it whole

    def detach(self, unpatch_all: bool = True) -> None:
        if not unpatch_all:  # ComfyUI re-registering the same model: it stays where it is
            return
        self.model.to(self.offload_device)
        self.loaded = 0
        _held.pop(_weights_key(self.model), None)
        log.info("WanCore: %s unloaded from %s by ComfyUI's model manager", type(self.model).__name__,
                 self.load_device)


_held: dict[int, _Held] = {}
"""Models we keep on the compute device inside ComfyUI, by :func:`_weights_key`."""


def unload(model) -> None:
    """Take ``model`` off the compute device now (and out of ComfyUI's list of loaded models)."""
    held = _held.get(_weights_key(model))
    if held is not None:
        for i in range(len(_mm.current_loaded_models) - 1, -1, -1):
            if _mm.current_loaded_models[i].model is held:
                _mm.current_loaded_models.pop(i)
        held.detach()
    else:
        model.to(offload_device())
    release_memory()


@contextmanager
def model_on_device(model, extra_bytes: int = 0):
    """``model`` whole on the compute device for the block. Inside ComfyUI it is loaded through ComfyUI's model
    manager (which first unloads other models to make room for it and ``extra_bytes`` of activations) and stays
    there between queue runs until ComfyUI needs the memory; standalone it goes back to the offload device
    afterwards. After a failure or a cancel it leaves the device in both cases."""
    device = compute_device()
    if not IN_COMFYUI:
        with on_compute_device(model):
            yield device
        return
    key = _weights_key(model)
    held = _held.get(key)
    if held is None or held.load_device != device:
        held = _held[key] = _Held(model, device, offload_device())
    _mm.load_models_gpu([held], memory_required=extra_bytes)
    try:
        yield device
    except BaseException:
        unload(model)
        raise


def render_started() -> None:
    """A new render begins: a standalone cancel left over from an earlier one no longer applies."""
    if not IN_COMFYUI:
        interrupt_event.clear()


def interrupt_requested() -> bool:
    if IN_COMFYUI:
        return bool(_mm.processing_interrupted())
    return interrupt_event.is_set()


def raise_if_interrupted() -> None:
    """Raise ComfyUI's own interrupt exception (so it reports a cancel, not an error), if requested."""
    if IN_COMFYUI:
        _mm.throw_exception_if_processing_interrupted()


@contextmanager
def cancellable():
    """Yields the interrupt check for a long stage; a cancel it caused is re-raised as ComfyUI's own."""
    try:
        yield interrupt_requested
    except RenderInterrupted:
        raise_if_interrupted()
        raise


class Progress:
    """Per-step progress with an optional preview image (``[h, w, 3]`` uint8 tensor)."""

    def __init__(self, total: int):
        self.total = total
        self._bar = _utils.ProgressBar(total) if IN_COMFYUI else None

    def update(self, step: int, preview: torch.Tensor | None = None) -> None:
        if self._bar is None:
            log.info("step %d/%d", step, self.total)
            return
        image = None
        if preview is not None:
            from comfy.cli_args import args
            from PIL import Image

            image = ("JPEG", Image.fromarray(preview.numpy()), preview_side(preview, args.preview_size))
        self._bar.update_absolute(step, self.total, image)


def stage_count(stage: str):
    """``count(done, total)`` for a stage other than sampling (VAE chunks, frames written): ComfyUI's progress bar
    on the running node inside ComfyUI, a log line at the stage's end otherwise."""
    bar = None

    def count(done: int, total: int) -> None:
        nonlocal bar
        if not IN_COMFYUI:
            return log_progress(log, stage, done, total)
        bar = bar or _utils.ProgressBar(total)
        bar.update_absolute(done, total)  # a fallback starting over may bring another total

    return count


class NodeHost:
    """The engine's host protocol (``wan_core.Host``) over this module's services: ComfyUI's device, model
    manager, progress bar with previews and interrupt inside ComfyUI; the standalone fallbacks otherwise."""

    def compute_device(self) -> torch.device:
        return compute_device()

    def budget(self, model, need: int, requested_gb: float = 0.0) -> int | None:
        return vram_budget(model, compute_device(), requested_gb, need=need)

    def make_room(self, nbytes: int) -> None:
        make_room(compute_device(), nbytes)

    def free_memory(self) -> int:
        return free_memory(compute_device())

    def on_device(self, *models):
        return on_compute_device(*models)

    def hold(self, model, extra_bytes: int = 0):
        return model_on_device(model, extra_bytes)

    def streaming(self, model):
        return placed_per_render(compute_device(), model)

    def release(self, model) -> None:
        unload(model)

    def progress(self, total: int):
        bar = Progress(total)
        return lambda step, x0: bar.update(step, latent_preview(x0))

    def count(self, stage: str):
        return stage_count(stage)

    def cancellable(self):
        return cancellable()

    def resume_folder(self) -> Path:
        return resume_folder()

    def report(self, line: str) -> None:
        report(line)


HOST = NodeHost()
"""The host every node renders on."""
