"""fp8 matrix products: the transformer blocks' fp8 Linear layers multiply in fp8 on the tensor cores.

On GPUs with fp8 tensor cores (compute capability 8.9: RTX 40xx, L4, L40; 9.0: H100, H200; newer), a Linear
whose weight is stored in ``float8_e4m3fn`` (fp8 and ComfyUI's scaled-fp8 files) can skip the cast of its
weight to bf16: its input is quantized to fp8 too and ``torch._scaled_mm`` multiplies the two with their
scales, accumulating in fp32 and writing bf16 (ComfyUI's ``fp8_e4m3fn_fast``). Elsewhere the cast path
(:func:`~wan_core.models.layers.cast_weight`) runs as before.

Which layers (:func:`uses_fp8_matmul`, the same decision on every device): the Linear layers inside the
transformer blocks (``blocks.*`` and VACE's ``vace_blocks.*``: attention q / k / v / o, the image keys and
values, the feed-forward) whose weight is fp8 and whose both sides are multiples of 16 (the tensor cores'
tile). The embeddings (patch, text, time, image), the norms and the head keep the cast path: they run once
per step on few rows, and the head's output is the predicted flow itself.

Scales (:func:`fp8_linear`): the weight's is the file's (ComfyUI's scaled fp8: a scalar or one per output
row; plain fp8: 1). The input's is one per token (``"token"``: the row's largest magnitude mapped into fp8's
range) or one for the whole input (``"tensor"``), rounded up to a power of two, so dividing by it is exact
in any float format and the quantized values are the input's own, rounded once to fp8. Per-token scaling
needs torch's row-wise kernel (CUDA compute capability 9.0+ and not Windows builds, which lack it; the CPU);
on 8.9 the per-tensor kernel runs (torch's row-wise one there can stall the GPU before torch 2.12).

The choice is per render (:class:`~wan_core.RenderContext`): its view of the model marks the chosen layers
(:func:`fp8_view`); the loaded model is never changed.
"""

from __future__ import annotations

import logging
import sys

import torch
from torch import nn

from ..errors import InputError
from .memory import TOKEN_CHUNK
from .patches import copy_along, shallow_copy

log = logging.getLogger(__name__)

FP8_MATMUL_CAPABILITY = (8, 9)
"""CUDA GPUs with fp8 tensor cores: Ada (8.9), Hopper (9.0) and newer."""

ROWWISE_CAPABILITY = (9, 0)
"""torch's row-wise scaled matrix product (one scale per token) runs reliably from Hopper on."""

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
TILE = 16
"""Both sides of a Linear that multiplies in fp8 are multiples of this (torch._scaled_mm's requirement)."""

BLOCK_PREFIXES = ("blocks.", "vace_blocks.")
SCALINGS = ("token", "tensor")


def fp8_matmul_unavailable(device: torch.device | str) -> str | None:
    """Why fp8 matrix products do not run on ``device`` by default (not a CUDA GPU, no fp8 tensor cores), or None."""
    device = torch.device(device)
    if not hasattr(torch, "_scaled_mm"):
        return f"this torch ({torch.__version__}) has no torch._scaled_mm"
    if device.type != "cuda":
        return f"fp8 matrix products run on CUDA GPUs with fp8 tensor cores, not on {device.type}"
    have = tuple(torch.cuda.get_device_capability(device))
    if have < FP8_MATMUL_CAPABILITY:
        return (f"this GPU (compute capability {have[0]}.{have[1]}) has no fp8 tensor cores; fp8 matrix products "
                f"need {FP8_MATMUL_CAPABILITY[0]}.{FP8_MATMUL_CAPABILITY[1]} or newer (RTX 40xx, L4, L40, H100)")
    return None


def activation_scaling(device: torch.device | str) -> str:
    """``"token"`` (one input scale per token) where torch's row-wise kernel runs, else ``"tensor"``."""
    device = torch.device(device)
    if device.type != "cuda":
        return "token"
    rowwise = tuple(torch.cuda.get_device_capability(device)) >= ROWWISE_CAPABILITY and sys.platform != "win32"
    return "token" if rowwise else "tensor"


def uses_fp8_matmul(name: str, module: nn.Module) -> bool:
    """Whether the layer at dotted path ``name`` multiplies in fp8 (see the module docstring for the rule)."""
    weight = getattr(module, "weight", None)
    if not name.startswith(BLOCK_PREFIXES) or not hasattr(module, "fp8_scaling") or getattr(module, "quantized", False):
        return False
    if weight is None or weight.dtype != FP8 or weight.dim() != 2 or weight.shape[0] % TILE or weight.shape[1] % TILE:
        return False
    scale = getattr(module, "scale_weight", None)
    return scale is None or scale.numel() in (1, weight.shape[0])


def fp8_view(model: nn.Module, scaling: str) -> nn.Module:
    """``model`` with each layer that :func:`uses_fp8_matmul` replaced by a copy marked to (``fp8_scaling``),
    sharing every tensor; ``model`` is not changed. Returns ``model`` itself when no layer qualifies."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    chosen = [name for name, module in model.named_modules() if uses_fp8_matmul(name, module)]
    if not chosen:
        return model
    copies: dict[str, nn.Module] = {"": shallow_copy(model)}
    for name in chosen:
        copy_along(copies, name).fp8_scaling = scaling
    view = copies[""]
    log.debug("fp8 matrix products (%s scales) in %d layers", scaling, len(chosen))
    return view


def input_scale(x: torch.Tensor, scaling: str) -> torch.Tensor:
    """The power-of-two scale of ``x [M, K]`` that maps its largest magnitude (per row for ``"token"``: ``[M, 1]``;
    else ``[]``) into fp8's range, float32; 1 for an all-zero row. Reductions only: no copy of ``x``."""
    dims = (-1,) if scaling == "token" else tuple(range(x.dim()))
    peak = torch.maximum(x.amax(dim=dims, keepdim=scaling == "token"), -x.amin(dim=dims, keepdim=scaling == "token"))
    peak = peak.float()
    scale = torch.exp2(torch.ceil(torch.log2(peak / FP8_MAX)))
    return torch.where(peak > 0, scale, torch.ones_like(scale))


def quantize_input(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x [M, K] / scale`` in fp8 (exact but for fp8's rounding: the scale is a power of two), computed
    :data:`TOKEN_CHUNK` rows at a time, so the temporaries are one slice's."""
    out = torch.empty(x.shape, dtype=FP8, device=x.device)
    inverse = (1.0 / scale).to(x.dtype)
    for start in range(0, x.shape[0], TOKEN_CHUNK):
        rows = slice(start, start + TOKEN_CHUNK)
        out[rows] = x[rows] * (inverse[rows] if inverse.dim() else inverse)
    return out


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor | None, bias: torch.Tensor | None,
               scaling: str) -> torch.Tensor:
    """``x [..., K] @ (weight [N, K] fp8 x weight_scale)^T + bias`` by ``torch._scaled_mm``: ``[..., N]`` in
    ``x``'s dtype (computed in bf16). ``weight_scale``: None, a scalar, or ``[N]`` (one per output row)."""
    rows = x.reshape(-1, x.shape[-1])
    a_scale = input_scale(rows, scaling)
    a = quantize_input(rows, a_scale)
    n = weight.shape[0]
    w_scale = torch.ones((), device=x.device) if weight_scale is None else weight_scale.to(x.device, torch.float32)
    after = None
    if scaling == "token":  # the row-wise kernel: both scales are vectors ([M, 1] and [1, N])
        b_scale = w_scale.reshape(1, -1).expand(1, n).contiguous()
    elif w_scale.numel() == 1:
        b_scale = w_scale.reshape(())
    else:  # per-tensor kernel with per-row weight scales: the rows' scales multiply its output
        b_scale, after = torch.ones((), device=x.device), w_scale.to(torch.bfloat16)
    out = torch._scaled_mm(a, weight.t(), a_scale, b_scale, out_dtype=torch.bfloat16)
    if after is not None:  # in place: the product is a new tensor, and a second [M, N] one would be a copy more
        out.mul_(after)
    if bias is not None:
        out.add_(bias.to(out.dtype))
    return out.to(x.dtype).reshape(*x.shape[:-1], n)


def render_scaling(model: nn.Module, device: torch.device, forced: bool | None) -> str | None:
    """The activation scaling a render of ``model`` on ``device`` multiplies fp8 layers with, or None for the cast
    path. ``forced``: None follows the model's ``fp8_matmul`` request where the device has fp8 tensor cores
    (else one log line); True runs it wherever torch can (also the CPU, for parity checks), and a CUDA GPU
    without fp8 tensor cores is an :class:`InputError`; False never."""
    if not hasattr(model, "fp8_matmul"):  # not a diffusion model
        return None
    wanted = model.fp8_matmul if forced is None else forced
    if not wanted:
        return None
    reason = fp8_matmul_unavailable(device)
    if reason is not None:
        if forced is None:
            log.warning("fp8 matrix products are off for this render (fp8 weights are cast to %s): %s",
                        getattr(model, "compute_dtype", torch.float32), reason)
            return None
        if torch.device(device).type == "cuda" or not hasattr(torch, "_scaled_mm"):
            raise InputError(f"fp8 matrix products were asked for, but {reason}; choose compute dtype default")
    return activation_scaling(device)
