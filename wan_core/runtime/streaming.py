"""Block streaming: a render's placement view of a model, with the blocks that do not fit copied in one by one.

:func:`placed_view` returns a per-render structural copy of a network (the loaded model is never changed)
in which every tensor is on the compute device except those of the streamed blocks, which stay where the
model keeps them (host memory; memory-mapped until first read) and are replaced by :class:`StreamedBlock`
wrappers. When a wrapper runs it takes its block's weights from the :class:`BlockStreamer` (copied ahead
on a side CUDA stream, ``prefetch`` blocks ahead, each tensor staged through pinned memory from torch's
caching host allocator, so pinned memory is bounded by the blocks in flight; events make the computation
wait only for copies it could not overlap), runs, and gives them back. The first streamed block starts
copying while the last resident one computes. On a CPU device the same code path runs without copies.
Any runner (resident, step caches) runs the wrappers unchanged.

The streamer counts the bytes it has placed on the device (resident + in flight) and their peak.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


def module_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module`` as stored (fp8 / packed blocks counted as such)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _copy_tree(module: nn.Module, convert, kept: dict[str, nn.Module] | None = None, path: str = "") -> nn.Module:
    """A structural copy of ``module``: new module objects all the way down, each tensor ``convert(t)``;
    the submodules at the dotted paths in ``kept`` are put in as the given objects, uncopied and unconverted."""
    kept = kept or {}
    twin = copy.copy(module)
    twin._parameters = {k: None if p is None else nn.Parameter(convert(p), requires_grad=False)
                        for k, p in module._parameters.items()}
    twin._buffers = {k: None if b is None else convert(b) for k, b in module._buffers.items()}
    twin._modules = {}
    for name, child in module._modules.items():
        where = f"{path}{name}"
        twin._modules[name] = kept[where] if where in kept else (
            None if child is None else _copy_tree(child, convert, kept, where + "."))
    return twin


class BlockStreamer:
    """Copies streamed blocks' weights to ``device`` ahead of use and counts the bytes placed there.

    Back-pressure on a GPU: the host thread queues work far ahead of the GPU, and the caching allocator frees a
    released copy only once the compute that used it is done, so unbounded it would reserve memory for nearly
    every streamed block at once. Each release records an event on the compute stream, and the host waits for
    the newest one before allocating the next copy: the copy of block i + prefetch starts once block i - 1 has
    computed, so at most ``prefetch`` + 1 block copies exist (the staging the memory plan counts) and the copy
    still overlaps block i."""

    def __init__(self, device: torch.device, order: list[nn.Module], prefetch: int = 1):
        self.device, self.prefetch, self.order = torch.device(device), prefetch, order
        self.cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._ready: dict[int, tuple[nn.Module, object, int]] = {}  # index -> (device block, event, bytes)
        self._released = None  # the event of the last release on the compute stream (events complete in order)
        self.placed = self.peak = 0

    def add_resident(self, nbytes: int) -> None:
        self._count(nbytes)

    def _count(self, nbytes: int) -> None:
        self.placed += nbytes
        self.peak = max(self.peak, self.placed)

    def start(self, index: int) -> None:
        """Begin copying block ``index`` (a no-op copy on a CPU device); nothing if it is copying or placed."""
        if index in self._ready or index >= len(self.order):
            return
        host = self.order[index]
        nbytes = module_bytes(host)
        self._count(nbytes)
        if not self.cuda:
            self._ready[index] = (host, None, nbytes)
            return
        if self._released is not None:
            self._released.synchronize()  # block i - 1 has computed: its copy's memory is free again
        with torch.cuda.stream(self._stream):
            def to_device(t: torch.Tensor) -> torch.Tensor:
                host_side = t.device.type == "cpu" and not t.is_pinned()
                staged = t.pin_memory() if host_side else t  # one block at a time, never a full copy
                return staged.to(self.device, non_blocking=True)

            block = _copy_tree(host, to_device)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._ready[index] = (block, event, nbytes)

    def acquire(self, index: int) -> nn.Module:
        """Block ``index`` with its weights on the device (waiting for its copy), the next ones started."""
        self.start(index)
        for ahead in range(index + 1, index + 1 + self.prefetch):
            self.start(ahead)
        block, event, _ = self._ready[index]
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        return block

    def release(self, index: int) -> None:
        """Drop block ``index``'s device copy (once the computation that used it is queued)."""
        block, _, nbytes = self._ready.pop(index)
        if self.cuda:  # the allocator must not hand these out to the side stream before the main stream is done
            main = torch.cuda.current_stream(self.device)
            for t in [*block.parameters(), *block.buffers()]:
                t.record_stream(main)
            self._released = torch.cuda.Event()
            self._released.record(main)
        self.placed -= nbytes


class StreamedBlock(nn.Module):
    """Stands in for block ``index`` of a placement view: runs it with weights from the streamer."""

    def __init__(self, index: int, streamer: BlockStreamer):
        super().__init__()
        self.index, self.streamer = index, streamer  # the host block is streamer.order[index] (not a child)

    def compiled(self, compile_fn):
        """Streamed blocks run eagerly (a fresh device copy each time): compiling applies to resident ones."""
        return self

    def forward(self, *args, **kwargs):
        return self._run("__call__", *args, **kwargs)

    def _run(self, method: str, *args, **kwargs):
        block = self.streamer.acquire(self.index)
        try:
            return getattr(block, method)(*args, **kwargs)
        finally:
            self.streamer.release(self.index)

    def __getattr__(self, name: str):
        """The block's other methods (a DiT block's ``keys_values``) run the same way, with its weights placed."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            streamer, index = self.__dict__.get("streamer"), self.__dict__.get("index")
            if streamer is None or not callable(getattr(type(streamer.order[index]), name, None)):
                raise
            return lambda *args, **kwargs: self._run(name, *args, **kwargs)


class StartsNextCopy(nn.Module):
    """Stands in for the last resident block before the streamed ones: starts copying the first streamed block
    (so that copy overlaps this block's computation), then runs the block itself."""

    def __init__(self, block: nn.Module, streamer: BlockStreamer):
        super().__init__()
        self.block = block
        self.__dict__["streamer"] = streamer  # not a child module

    def forward(self, *args, **kwargs):
        self.streamer.start(0)
        return self.block(*args, **kwargs)

    def compiled(self, compile_fn):
        inner = self.block.compiled(compile_fn) if hasattr(self.block, "compiled") else compile_fn(self.block)

        def run(*args, **kwargs):
            self.streamer.start(0)
            return inner(*args, **kwargs)

        return run

    def __getattr__(self, name: str):
        """The block's other methods and attributes (a DiT block's ``keys_values``, ``index``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)


def placed_view(model: nn.Module, device: torch.device, streamed: Iterable[int], prefetch: int = 1,
                blocks: str = "blocks", on_host: Iterable[str] = ()) -> tuple[nn.Module, BlockStreamer]:
    """A per-render copy of ``model`` on ``device`` whose blocks ``streamed`` (of the ModuleList at the dotted
    path ``blocks``) stay in host memory behind :class:`StreamedBlock` wrappers, and whose submodules at the
    dotted paths ``on_host`` (a text encoder's token embedding: a lookup, not a product) stay where they are.
    Returns the view and its streamer (which counts the bytes placed on the device)."""
    device = torch.device(device)
    streamed = sorted(set(streamed))
    stack = model.get_submodule(blocks)
    streamer = BlockStreamer(device, [stack[i] for i in streamed], prefetch)
    position = {i: n for n, i in enumerate(streamed)}
    resident_bytes = 0

    def to_device(t: torch.Tensor) -> torch.Tensor:
        nonlocal resident_bytes
        resident_bytes += t.numel() * t.element_size()
        return t.to(device)

    placed = [StreamedBlock(position[i], streamer) if i in position else _copy_tree(stack[i], to_device)
              for i in range(len(stack))]
    before = min(position, default=0) - 1  # the resident block that runs while the first streamed one copies
    if before >= 0 and before not in position:
        placed[before] = StartsNextCopy(placed[before], streamer)
    kept = {blocks: nn.ModuleList(placed)}
    kept.update({path: model.get_submodule(path) for path in on_host})
    view = _copy_tree(model, to_device, kept)  # every other tensor to the device (a no-op move on the CPU)
    streamer.add_resident(resident_bytes)
    return view, streamer
