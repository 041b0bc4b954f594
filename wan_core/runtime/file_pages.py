"""Giving back the system memory of a model's memory-mapped weights when it is done for a while.

Weights loaded from safetensors (and GGUF) are views into file mappings: the pages a render reads stay in the
process's resident memory as clean file-backed pages until the kernel needs the room. That is harmless for one
model, but an expert pair reads two 14B files one after the other, and without a hint the first expert's pages
stay resident beside the second's: the peak resident memory is two experts, and on a machine with less RAM
than that the kernel has to find out by itself which pages to drop. :func:`release_file_pages` tells it, with
``madvise(MADV_PAGEOUT)`` over the file-backed mappings a module's CPU tensors lie in: their clean pages leave
the resident set now and are read from the file again on the next use. It is a hint, never a loss: a page the
process wrote (copy-on-write) is kept (or swapped), nothing is dropped that cannot come back.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21
"""Linux >= 5.4: reclaim the range's pages (clean file-backed ones are dropped, others swapped if possible)."""


def file_mappings() -> list[tuple[int, int]]:
    """``(start, end)`` address ranges of this process's mappings of regular files (Linux ``/proc/self/maps``;
    empty elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/") and fields[4] != "0":  # a path and an inode
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end))
    return out


def mapped_ranges(module: torch.nn.Module) -> list[tuple[int, int]]:
    """The page-aligned ``(start, end)`` ranges of ``module``'s CPU tensor storages that lie in file mappings,
    merged (many tensors are views of one file's mapping)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    spans = set()
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type == "cpu" and tensor.numel():
            storage = tensor.untyped_storage()
            spans.add((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
    maps, out = file_mappings(), []
    for start, end in sorted(spans):
        if not any(m_start <= start and end <= m_end for m_start, m_end in maps):
            continue
        start, end = start // page * page, -(-end // page) * page
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def release_file_pages(module) -> int:
    """Hint the kernel to drop the resident pages of ``module``'s memory-mapped weights (see the module
    docstring); returns the bytes of the ranges advised (0: nothing mapped, not Linux, or the hint refused)."""
    if not isinstance(module, torch.nn.Module) or not sys.platform.startswith("linux"):
        return 0
    ranges = mapped_ranges(module)
    if not ranges:
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    for start, end in ranges:
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
        else:  # an older kernel (EINVAL): the pages stay until the kernel needs them
            log.debug("madvise(MADV_PAGEOUT) refused: %s", os.strerror(ctypes.get_errno()))
            return advised
    log.debug("gave back the pages of %d mapped ranges, %.2f GiB", len(ranges), advised / 2**30)
    return advised
