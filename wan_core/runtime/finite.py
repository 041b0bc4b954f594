"""Finding NaN / Inf: in inputs before a render, and in weights once a render's output goes non-finite.

Weights are scanned only after something went wrong, so a healthy render pays nothing for it, and
the error can still name the exact tensor of the damaged file.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError, InputError, RenderError


def is_finite(tensor: torch.Tensor) -> bool:
    """True when every value is finite (integer tensors always are; fp8 is widened first)."""
    if not tensor.is_floating_point():
        return True
    values = tensor.float() if tensor.dtype.itemsize == 1 else tensor
    return bool(torch.isfinite(values).all())


def check_finite(name: str, tensor: torch.Tensor | None, fix: str) -> None:
    """Raise :class:`InputError` naming ``name`` if ``tensor`` holds NaN or Inf."""
    if tensor is not None and not is_finite(tensor):
        bad = int((~torch.isfinite(tensor.float())).sum())
        raise InputError(f"{name} holds {bad} NaN/Inf value(s) of {tensor.numel()}; {fix}")


def check_output(what: str, tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``tensor`` if finite; else a :class:`CheckpointError` naming ``module``'s damaged weights, or an
    :class:`RenderError` when the weights are sound (an overflow of the compute dtype)."""
    if is_finite(tensor):
        return tensor
    weights = nonfinite_parameters(module)
    if weights:
        raise CheckpointError(f"the {what}'s weights hold NaN/Inf ({', '.join(weights)}): the file is damaged; "
                              "fetch it again")
    raise RenderError(f"the {what} produced NaN/Inf from valid inputs; run it in fp32 or bf16")


def nonfinite_parameters(module: nn.Module, most: int = 5) -> list[str]:
    """Names of (up to ``most``) parameters and buffers of ``module`` that hold NaN or Inf."""
    found = []
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if tensor is not None and not is_finite(tensor):
            found.append(name)
            if len(found) >= most:
                break
    return found
