"""Counting the bytes of live tensors while code runs (any device, ``meta`` included): the peak of what a
forward holds at once, measured by the storages its operations create and free."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Inside ``with LiveBytes(ignore) as live:``, ``live.peak`` is the most bytes of tensor storage created
    inside the block that were alive at once (storages of the tensors in ``ignore``, such as weights and
    inputs, are not counted even when an operation returns them)."""

    def __init__(self, ignore=()):
        super().__init__()
        self.ignore = {t.untyped_storage()._cdata for t in ignore}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live or key in self.ignore:
            return
        size = storage.nbytes()
        self.live[key] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._freed, key)  # storages keep their Python object while they live

    def _freed(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out
