"""Weight patches for one render, applied to a view of the model; the loaded model never changes.

:func:`patched_view` returns a structural copy of a network in which only the modules on the path
to a patched tensor are copied (their parameter dicts too); every other module and every tensor
is shared with the loaded model. Each patch then changes its owner in the copy: a full delta
merges into a new tensor (:class:`WeightDelta`); later kinds (low-rank updates applied where a
Linear computes) replace the owner module in the copy. Building a view copies no weight data
beyond the patched tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..errors import InputError


class WeightPatch(Protocol):
    def apply(self, owner: nn.Module, name: str, compute_dtype: torch.dtype) -> None:
        """Change ``owner`` (a per-render copy) so that its tensor ``name`` computes as patched."""
        ...


@dataclass(frozen=True)
class WeightDelta:
    """``tensor + strength * delta`` for one parameter (a full delta, as LoRA ``.diff`` / ``.diff_b`` keys).

    The sum is made in fp32 from the weight as it computes (fp8 and "scaled fp8" dequantized
    first) and kept in the weight's own dtype, or in the compute dtype for 8-bit weights.
    """

    delta: torch.Tensor
    strength: float = 1.0

    def apply(self, owner: nn.Module, name: str, compute_dtype: torch.dtype) -> None:
        weight = owner._parameters[name]
        scale = getattr(owner, "scale_weight", None) if name == "weight" else None
        merged = weight.float()
        if scale is not None:  # scaled fp8: the stored weight times its per-layer scale
            merged = merged * scale.float().reshape(-1, *([1] * (weight.dim() - 1)))
            owner._buffers["scale_weight"] = None
        merged = merged + self.strength * self.delta.to(device=weight.device, dtype=torch.float32)
        keep = compute_dtype if weight.dtype.itemsize == 1 else weight.dtype
        owner._parameters[name] = nn.Parameter(merged.to(keep), requires_grad=False)


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing every tensor and child with ``module``, with dicts of its own."""
    twin = copy.copy(module)
    twin._parameters = dict(module._parameters)
    twin._buffers = dict(module._buffers)
    twin._modules = dict(module._modules)
    return twin


def check_patches(model: nn.Module, patches: Mapping[str, WeightPatch]) -> None:
    """Raise :class:`InputError` listing patch names that are not parameters of ``model`` or misfit in shape."""
    params = dict(model.named_parameters())
    unknown = sorted(k for k in patches if k not in params)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise InputError(f"{len(unknown)} patched tensor(s) are not in this model: {shown}")
    for name, patch in patches.items():
        delta = getattr(patch, "delta", None)
        if delta is not None and tuple(delta.shape) != tuple(params[name].shape):
            raise InputError(f"patch for {name} has shape {tuple(delta.shape)}; the model's tensor is "
                             f"{tuple(params[name].shape)} (a patch made for another model size?)")


def patched_view(model: nn.Module, patches: Mapping[str, WeightPatch], compute_dtype: torch.dtype) -> nn.Module:
    """``model`` as ``patches`` change it, sharing everything unpatched; ``model`` itself is not modified.

    patches: ``{parameter name (as in model.named_parameters()): patch}``.
    """
    check_patches(model, patches)
    if not patches:
        return model
    view = _shallow_copy(model)
    copies: dict[str, nn.Module] = {"": view}
    for name in sorted(patches):
        path, _, leaf = name.rpartition(".")
        owner = view
        prefix = ""
        for part in path.split(".") if path else ():
            prefix = f"{prefix}.{part}" if prefix else part
            if prefix not in copies:
                copies[prefix] = _shallow_copy(owner._modules[part])
                owner._modules[part] = copies[prefix]
            owner = copies[prefix]
        patches[name].apply(owner, leaf, compute_dtype)
    return view
