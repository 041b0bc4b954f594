"""Attention backends by name: the one place a network gets its attention kernel from.

A backend is ``attend(q, k, v) -> out`` with q ``[B, Lq, heads, d]``, k and v ``[B, Lk, heads, d]``
and out ``[B, Lq, heads * d]``: softmax attention with the 1/sqrt(d) scale, no mask. A render picks
one by name through its :class:`~wan_core.runtime.context.RenderContext`; nothing is patched at
module level. Faster kernels register here under their own names (DESIGN §12).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

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
    """Names of the registered backends, default first."""
    return list(_BACKENDS)


def get_attention(name: str) -> AttentionBackend:
    """The backend called ``name``; an unknown or unusable name is an :class:`InputError` saying why."""
    backend = _BACKENDS.get(name)
    if backend is None:
        raise InputError(f"attention backend {name!r} is unknown; choose one of {', '.join(_BACKENDS)}")
    reason = backend.unavailable()
    if reason:
        raise InputError(f"attention backend {name!r} cannot run here: {reason}; use 'sdpa'")
    return backend


DEFAULT_ATTENTION = "sdpa"

register_backend(AttentionBackend(DEFAULT_ATTENTION, sdpa_attention,
                                  description="torch scaled_dot_product_attention (every device)"))
