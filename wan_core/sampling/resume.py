"""Renders that survive a crash: the sampler's whole state saved after every step, resumed by identity.

A render's identity is a hash of everything that decides its result: the model (a fingerprint of its
tensors and config), the weight patches, the prompt embeddings, the start latent and image
conditioning, seed, latent size, sampler settings, compute dtype, attention backend and device
type. After each step the solver's :class:`~.solvers.SolverState` is written atomically (a temporary
file, then a rename) to the render's own file in a :class:`ResumeStore` folder, named by its identity,
so renders cancelled in turn each keep theirs; a render started again with the same identity continues
from the last finished step and ends bit-identically. A damaged or unusable file is removed with a log
line; a checkpoint that cannot be written is a warning and the render goes on. A store keeps at most
:data:`KEEP_FILES` files, none older than :data:`KEEP_DAYS` days. Files hold tensors and JSON text only
(safetensors).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..files import remove_stale_partials, temporary_path
from ..runtime.finite import is_finite
from .solvers import SolverState

log = logging.getLogger(__name__)

FORMAT = "wancore-resume-1"
KEEP_FILES = 8
"""Resume files a store keeps (the newest; 32 MiB each at 832x480x81 with UniPC, so about 256 MiB)."""
KEEP_DAYS = 7.0
"""Older resume files are removed when the next render starts."""
SAMPLED_VALUES = 64
"""Values read from each weight for a model's fingerprint (evenly spaced): cheap, and any change of file,
dtype or patch moves it."""


def _digest_tensor(h, tensor: torch.Tensor | None, sample: int | None = None) -> None:
    if tensor is None:
        h.update(b"none")
        return
    flat = tensor.detach().reshape(-1)
    if sample is not None and flat.numel() > sample:
        flat = flat[torch.linspace(0, flat.numel() - 1, sample).long().to(flat.device)]
    h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    h.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())


def model_fingerprint(model) -> str:
    """A hash of a model's config and a sample of every tensor (any nn.Module; other callables: their name)."""
    h = hashlib.sha256(repr(getattr(model, "config", type(model).__name__)).encode())
    if isinstance(model, torch.nn.Module):
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            _digest_tensor(h, tensor, SAMPLED_VALUES)
    return h.hexdigest()


def render_identity(model, tensors: dict[str, torch.Tensor | None], settings: dict, render) -> str:
    """The identity of a render: model fingerprint, patches, every input tensor in full, and its settings."""
    h = hashlib.sha256(FORMAT.encode())
    h.update(model_fingerprint(model).encode())
    for name, patch in sorted(render.patches_for(model).items()):
        h.update(name.encode())
        for strength, scale, parts in patch.digest_parts():
            h.update(repr((strength, scale)).encode())
            for part in parts:
                _digest_tensor(h, part, SAMPLED_VALUES)
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        _digest_tensor(h, tensor)
    numerics = {"attention": render.attention, "compute_dtype": str(render.dtype_for(model))
                if isinstance(model, torch.nn.Module) else None, "runner": getattr(render.runner, "identity", None)}
    h.update(json.dumps({**settings, **numerics}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _state_problem(x: torch.Tensor, history: dict[str, torch.Tensor], shape: tuple[int, ...] | None) -> str:
    """Why a saved solver state cannot be resumed ("" when it can): a latent or history tensor of another shape
    than ``shape`` (a step cache's own tensors, ``runner/...``, have theirs), or any NaN / Inf."""
    for name, tensor in {"x": x, **history}.items():
        if shape is not None and not name.startswith("runner/") and tuple(tensor.shape) != tuple(shape):
            return f"its {name} is {tuple(tensor.shape)}, the render's latent {tuple(shape)}"
        if not is_finite(tensor):
            return f"its {name} holds NaN/Inf values"
    return ""


class ResumeStore:
    """A folder of resume files, one per render identity: the newest ``keep`` files, none older than
    ``max_age_days``, are kept."""

    def __init__(self, folder: str | os.PathLike, keep: int = KEEP_FILES, max_age_days: float = KEEP_DAYS):
        self.folder, self.keep, self.max_age_days = Path(folder), keep, max_age_days

    def file_for(self, identity: str) -> ResumeFile:
        """The resume file of render ``identity``; the store is pruned around it first."""
        file = ResumeFile(self.folder / f"{identity[:32]}.safetensors")
        self.prune(keep=file.path)
        return file

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Remove the files beyond the newest ``self.keep`` (``keep`` counts among them and is never removed)
        and those older than the age limit; returns what went."""
        try:
            files = [(f.stat().st_mtime, f) for f in self.folder.glob("*.safetensors") if f != keep]
        except OSError:
            return []
        files.sort(reverse=True)
        now, room = time.time(), self.keep - (1 if keep is not None else 0)
        removed = [f for i, (mtime, f) in enumerate(files) if i >= room or now - mtime > self.max_age_days * 86400]
        for f in removed:
            f.unlink(missing_ok=True)
            log.info("removed the old resume file %s (a store keeps %d files of at most %g days)", f, self.keep,
                     self.max_age_days)
        return removed


class ResumeFile:
    """One render's checkpoint: ``path`` (safetensors; the solver's tensors and JSON metadata). A checkpoint
    that cannot be written (a folder without write permission, a full disk) is logged as a warning naming the
    path, and no more are attempted: the render goes on without."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._writing: Future | None = None
        self.failed = False

    def load(self, identity: str, steps: int, shape: tuple[int, ...] | None = None) -> SolverState | None:
        """The saved state of render ``identity`` (``steps`` long, latent ``shape``); None if missing, another
        render's, or unusable: a file that cannot be read, or whose state is not finite or not of ``shape``, is
        removed (every retry would fail the same way) with a log line."""
        self.flush()
        remove_stale_partials(self.path.parent)  # half-written checkpoints of killed renders
        if not self.path.is_file():
            return None
        try:
            with safe_open(self.path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta["format"] != FORMAT or meta["identity"] != identity or int(meta["steps"]) != steps:
                log.info("resume file %s belongs to another render (other model, prompt, seed, size or settings); "
                         "ignored, starting fresh", self.path)
                return None
            step, order = int(meta["step"]), int(meta["order"])
            x = tensors.pop("x")
        except (OSError, KeyError, ValueError, TypeError, SafetensorError) as err:
            return self._discard(f"it is damaged ({err})")
        if not 0 < step <= steps:
            return self._discard(f"it says step {step} of {steps}")
        problem = _state_problem(x, tensors, shape)
        if problem:
            return self._discard(problem)
        return SolverState(step, x, tensors, order)

    def _discard(self, why: str) -> None:
        log.warning("resume file %s cannot be used: %s; removed, starting fresh", self.path, why)
        self.path.unlink(missing_ok=True)
        return None

    def save(self, identity: str, steps: int, state: SolverState, manifest: dict | None = None) -> None:
        """Hand ``state`` to the background writer: the tensors are copied to the host now, the file is
        written atomically (a temporary file, then a rename) while the next step computes. A save that
        is still writing when the next one comes is finished first: files go out in step order."""
        self.flush()
        if self.failed:
            return
        meta = {"format": FORMAT, "identity": identity, "steps": str(steps), "step": str(state.step),
                "order": str(state.order), "manifest": json.dumps(manifest or {}, default=str)}
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in {"x": state.x, **state.history}.items()}
        self._writing = self._pool().submit(self._write, tensors, meta)

    def flush(self) -> None:
        """Wait for the last save to reach the disk; one that failed is a warning (and the last attempted)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            try:
                writing.result()
            except (OSError, SafetensorError) as err:
                self.failed = True
                log.warning("the resume checkpoint %s could not be written (%s); the render goes on without "
                            "checkpoints: give the folder write permission or free disk space to keep them",
                            self.path, err)

    def remove(self) -> None:
        self.flush()
        try:
            self.path.unlink(missing_ok=True)
        except NotADirectoryError:  # its folder could not be made: nothing was written
            pass

    def _write(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = temporary_path(self.path)
        try:
            save_file(tensors, temp, metadata=meta)
            os.replace(temp, self.path)
        finally:
            temp.unlink(missing_ok=True)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wancore-resume")
        return self._executor
