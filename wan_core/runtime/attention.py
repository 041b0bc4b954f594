"""Attention backends by name: the one place a network gets its attention kernel from.

A backend is ``attend(q, k, v) -> out`` with q ``[B, Lq, heads, d]``, k and v ``[B, Lk, heads, d]``
and out ``[B, Lq, heads * d]``: softmax attention with the 1/sqrt(d) scale, no mask. A render picks
one by name through its :class:`~wan_core.runtime.context.RenderContext`; nothing is patched at
module level. "flash" (flash-attn) and "sage" (SageAttention) run on CUDA in fp16 / bf16; a backend
that cannot run here falls back to "sdpa" with one log line naming why; "auto" picks the fastest
that can run.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's ``scaled_dot_product_attention`` (picks flash / memory-efficient / math kernels itself)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)  # [B, Lq, heads, d] -> [B, Lq, heads * d]


@dataclass(frozen=True)
class AttentionBackend:
    """A named kernel and what it needs: ``unavailable()`` returns why it cannot run here, or None."""

    name: str
    attend: AttentionFn
    unavailable: Callable[[], str | None] = lambda: None
    description: str = ""


_BACKENDS: dict[str, AttentionBackend] = {}


def register_backend(backend: AttentionBackend) -> None:
    """Add a backend under its name (a second one with the same name is refused)."""
    if backend.name in _BACKENDS:
        raise ValueError(f"an attention backend named {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend


def attention_backends() -> list[str]:
    """Names to choose from: the registered backends (default first), then "auto"."""
    return [*_BACKENDS, AUTO]


def get_attention(name: str) -> AttentionBackend:
    """The backend called ``name``, or ``sdpa`` (with one log line saying why) when it cannot run here.

    "auto" is the fastest that can run: flash, then sage, then sdpa. An unknown name is an
    :class:`InputError` listing the known ones.
    """
    if name == AUTO:
        for candidate in ("flash", "sage"):
            if candidate in _BACKENDS and not _BACKENDS[candidate].unavailable():
                return _BACKENDS[candidate]
        return _BACKENDS[DEFAULT_ATTENTION]
    backend = _BACKENDS.get(name)
    if backend is None:
        raise InputError(f"attention backend {name!r} is unknown; choose one of {', '.join([*_BACKENDS, AUTO])}")
    reason = backend.unavailable()
    if reason:
        if name not in _WARNED:
            log.warning("attention backend %r cannot run here (%s); using sdpa", name, reason)
            _WARNED.add(name)
        return _BACKENDS[DEFAULT_ATTENTION]
    return backend


DEFAULT_ATTENTION = "sdpa"
AUTO = "auto"
_WARNED: set[str] = set()


MIN_CAPABILITY = {"flash_attn": (8, 0), "sageattention": (8, 0)}
"""The oldest CUDA compute capability each kernel package runs on (flash-attn 2 and SageAttention 2: Ampere)."""


def _missing(module: str, package: str) -> Callable[[], str | None]:
    """``unavailable()`` for a CUDA kernel package: why it cannot run here (not installed, installed but not
    importable, e.g. built for another torch or CUDA, no GPU, a GPU older than the package supports), or None."""
    @functools.cache  # the import is tried once per process
    def import_error() -> str | None:
        try:
            importlib.import_module(module)
        except Exception as err:  # an ABI mismatch raises ImportError, OSError or RuntimeError
            return f"{package} is installed but cannot be imported ({type(err).__name__}: {err})"
        return None

    def unavailable() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"the {package} package is not installed (pip install {package})"
        if import_error():
            return import_error()
        if not torch.cuda.is_available():
            return f"{package} needs a CUDA GPU"
        have, need = torch.cuda.get_device_capability(), MIN_CAPABILITY.get(module, (0, 0))
        if tuple(have) < need:
            return (f"{package} needs a GPU of compute capability {need[0]}.{need[1]} or newer; this one is "
                    f"{have[0]}.{have[1]}")
        return None

    return unavailable


def _half_precision(kernel: AttentionFn) -> AttentionFn:
    """A CUDA kernel that takes fp16 / bf16 only; other dtypes (fp32 renders) go to sdpa."""
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.dtype not in (torch.float16, torch.bfloat16) or not q.is_cuda:
            return sdpa_attention(q, k, v)
        return kernel(q, k, v).flatten(2)

    return attend


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v)  # [B, L, heads, d] in and out


def _sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD")  # [B, L, heads, d] in and out


register_backend(AttentionBackend(DEFAULT_ATTENTION, sdpa_attention,
                                  description="torch scaled_dot_product_attention (every device)"))
register_backend(AttentionBackend("flash", _half_precision(_flash), _missing("flash_attn", "flash-attn"),
                                  "flash-attn 2 kernels (CUDA, fp16 / bf16)"))
register_backend(AttentionBackend("sage", _half_precision(_sage), _missing("sageattention", "sageattention"),
                                  "SageAttention quantized kernels (CUDA, fp16 / bf16)"))
