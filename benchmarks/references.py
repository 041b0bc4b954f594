"""Import the official Wan code (PyPI ``wan22``, module ``wan``) on a CPU-only torch.

Used by the parity tests and the benchmarks. ``wan/__init__.py`` imports every pipeline and
``wan.modules`` pulls CUDA-only code at import, so both packages are replaced by empty stand-ins
that only carry their ``__path__``; the needed submodules are then imported directly.
``flash_attention`` (CUDA-only) is replaced by an fp32 scaled-dot-product attention with the same
key-length masking.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F


def _stub_package(name: str, path: str) -> None:
    if getattr(sys.modules.get(name), "__wancore_stub__", False):
        return
    module = types.ModuleType(name)
    module.__path__ = [path]
    module.__wancore_stub__ = True
    sys.modules[name] = module


def sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None,
                         q_scale=None, causal=False, window_size=(-1, -1), deterministic=False,
                         dtype=None, version=None):
    """fp32 stand-in for ``wan.modules.attention.flash_attention``: q/k/v ``[B, L, heads, d]``."""
    out_dtype = q.dtype
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
    if q_scale is not None:
        q = q * q_scale
    mask = None
    if k_lens is not None:
        keys = torch.arange(k.shape[2])
        mask = (keys[None, :] < k_lens[:, None].cpu()).view(k.shape[0], 1, 1, -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale, is_causal=causal)
    return out.transpose(1, 2).to(out_dtype)


def wan_module(name: str):
    """``wan.<name>`` (e.g. ``"modules.model"``) from the installed wan22; ImportError if absent."""
    if "wan" in sys.modules:
        root = sys.modules["wan"].__path__[0]
    else:
        spec = importlib.util.find_spec("wan")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the reference implementation wan22 is not installed (pip install --no-deps wan22)")
        root = spec.submodule_search_locations[0]
    for package in ("wan", "wan.modules", "wan.utils"):
        _stub_package(package, root + package[3:].replace(".", "/"))
    module = importlib.import_module(f"wan.{name}")
    if name == "modules.model":
        module.flash_attention = sdpa_flash_attention
    return module


def exact_attention_with_lse(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """fp32 stand-in for yunchang's ``pytorch_attn_forward`` (whose flash kernel is CUDA-only): q / k / v
    ``[B, L, heads, d]`` -> (out ``[B, L, heads, d]``, log-sum-exp of the scores ``[B, heads, L]``)."""
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale)
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2), scores.logsumexp(-1)
