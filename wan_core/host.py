"""The host a render runs in: the services a front end gives the engine, as a small typed protocol.

A render job (:mod:`wan_core.job`) and the stages around it (:mod:`wan_core.stages`) ask their host where
to compute, how much device memory they may use (and to make room for it), to place and release models, to
show progress, whether the user cancelled, where resume files live, and to show a status line. The
engine ships :class:`StandaloneHost` (the command line, the task functions, scripts); inside ComfyUI,
``nodes/host.py`` implements the same protocol over ComfyUI's model manager, progress bar and interrupt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import torch

from .runtime.memory import available_bytes

log = logging.getLogger(__name__)

Progress = Callable[[int, torch.Tensor], None]
"""``progress(steps_done, x0_prediction)`` after each step (the prediction: RAW ``[B, 16, F', h, w]``)."""

Count = Callable[[int, int], None]
"""``count(done, total)`` after each unit of a stage other than sampling (a VAE chunk, a video frame)."""

OnProgress = Callable[[str, int, int], None]
"""``on_progress(stage, done, total)``: what a front end's display is told (stage: ``sampling``, ``decoding``,
``encoding``, ``writing``)."""


class Host(Protocol):
    def compute_device(self) -> torch.device:
        """Where renders compute."""

    def budget(self, model, need: int, requested_gb: float = 0.0) -> int | None:
        """Bytes a stage may place for ``model`` on the compute device: the user's ``requested_gb`` (> 0), else
        automatic, after making room for ``need`` bytes where the host can; None: the planner's own default."""

    def make_room(self, nbytes: int) -> None:
        """Free ``nbytes`` on the compute device where the host can (other models it holds are unloaded)."""

    def free_memory(self) -> int:
        """Bytes free on the compute device now."""

    def on_device(self, *models) -> AbstractContextManager[torch.device]:
        """``models`` whole on the compute device for the block, off it afterwards (also after a failure)."""

    def hold(self, model, extra_bytes: int = 0) -> AbstractContextManager[torch.device]:
        """``model`` whole on the compute device for the block, with room for ``extra_bytes`` of activations; a
        host may keep it there between renders (ComfyUI does, until it needs the memory)."""

    def streaming(self, model) -> AbstractContextManager[torch.device]:
        """A block in which the render places ``model``'s weights itself (a streaming plan): the model is in
        host memory first, the device's cached memory is freed afterwards."""

    def release(self, model) -> None:
        """Take ``model`` off the compute device now."""

    def progress(self, total: int) -> Progress:
        """A per-step progress callback for a render of ``total`` steps."""

    def count(self, stage: str) -> Count:
        """A progress callback for the units of a stage other than sampling (``decoding``: VAE chunks of all
        tiles, ``encoding``, ``writing``: frames); its total may change when a stage starts over (a fallback)."""

    def cancellable(self) -> AbstractContextManager[Callable[[], bool] | None]:
        """Yields the cancel check of a long stage (None: nothing can cancel it but an exception)."""

    def resume_folder(self) -> Path | None:
        """The folder of resume files (one per render identity, :class:`~wan_core.ResumeStore`); None: no
        resume."""

    def report(self, line: str) -> None:
        """A status line for the user."""


def log_progress(logger: logging.Logger, stage: str, done: int, total: int) -> None:
    """Progress without a display: a line per sampling step, one at the end of any other stage."""
    if stage == "sampling":
        logger.info("step %d/%d", done, total)
    elif done == total:
        logger.info("%s: %d/%d done", stage, done, total)


def device_of(model) -> torch.device:
    """Where ``model``'s weights are (an ``nn.Module``, or anything with a ``device``)."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


class StandaloneHost:
    """The host without ComfyUI: one device, the user's budget or the planner's default, models moved there for
    a stage and back to where they were, status as lines of ``logger`` (the front end's; default this module's),
    progress to ``on_progress`` (a display; default: a line per step, one per stage at its end), an optional
    cancel check and resume folder; ``shares_text``: one rank of a torchrun render (rank 0 encodes the prompts and
    sends them to the others)."""

    def __init__(self, device: torch.device | str | None = None, resume_folder: str | Path | None = None,
                 interrupt: Callable[[], bool] | None = None, logger: logging.Logger | None = None,
                 on_progress: OnProgress | None = None, shares_text: bool = False):
        cuda = torch.cuda.is_available()
        self.device = torch.device(device) if device is not None else torch.device("cuda" if cuda else "cpu")
        self._resume_folder = None if resume_folder is None else Path(resume_folder)
        self._interrupt = interrupt
        self._log = logger or log
        self._on_progress = on_progress or self._log_progress
        self.shares_text = shares_text  # one rank of a torchrun render: rank 0 encodes the prompts for all

    def compute_device(self) -> torch.device:
        return self.device

    def budget(self, model, need: int, requested_gb: float = 0.0) -> int | None:
        return int(requested_gb * 2**30) if requested_gb and requested_gb > 0 else None

    def make_room(self, nbytes: int) -> None:
        return None  # nobody else holds memory we could ask for

    def free_memory(self) -> int:
        return available_bytes(self.device)

    @contextmanager
    def on_device(self, *models) -> Iterator[torch.device]:
        """The models on this host's device for the block, then back: a network that moved gets its very own
        host tensors back (memory-mapped weights stay mapped, clean and reclaimable, instead of coming back as
        a fresh copy: an expert pair's first expert leaves no copy of itself in system memory)."""
        homes = [device_of(model) for model in models]
        kept = [host_tensors(model) if home != self.device else None for model, home in zip(models, homes)]
        try:
            for model in models:
                model.to(self.device)
            yield self.device
        finally:
            for model, home, tensors in zip(models, homes, kept):
                if tensors is None:
                    model.to(home)
                else:
                    restore_tensors(tensors)
            _empty_cache()

    def hold(self, model, extra_bytes: int = 0) -> AbstractContextManager[torch.device]:
        return self.on_device(model)

    @contextmanager
    def streaming(self, model) -> Iterator[torch.device]:
        self.release(model)
        try:
            yield self.device
        finally:
            _empty_cache()

    def release(self, model) -> None:
        model.to("cpu")
        _empty_cache()

    def progress(self, total: int) -> Progress:
        return lambda step, _x0: self._on_progress("sampling", step, total)

    def count(self, stage: str) -> Count:
        return lambda done, total: self._on_progress(stage, done, total)

    def _log_progress(self, stage: str, done: int, total: int) -> None:
        log_progress(self._log, stage, done, total)

    @contextmanager
    def cancellable(self) -> Iterator[Callable[[], bool] | None]:
        yield self._interrupt

    def resume_folder(self) -> Path | None:
        return self._resume_folder

    def report(self, line: str) -> None:
        self._log.info(line)


def host_tensors(model) -> list | None:
    """``(module, parameter or buffer name, tensor)`` of every tensor of an ``nn.Module`` (the tensors themselves,
    which a move to another device replaces), or None for anything else (moved back with ``.to``)."""
    module = model if isinstance(model, torch.nn.Module) else None
    if module is None:
        return None
    kept = [(m, name, p.data) for m in module.modules() for name, p in m._parameters.items() if p is not None]
    return kept + [(m, name, b) for m in module.modules() for name, b in m._buffers.items() if b is not None]


def restore_tensors(kept: list) -> None:
    """Put the tensors :func:`host_tensors` kept back into their modules."""
    for module, name, tensor in kept:
        current = module._parameters.get(name)
        if current is not None:
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=current.requires_grad)
        else:
            module._buffers[name] = tensor


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
