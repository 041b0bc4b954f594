"""Weight patches for one render, applied to a view of the model; the loaded model never changes.

:func:`patched_view` returns a structural copy of a network in which only the modules on the path
to a patched tensor are copied (their parameter dicts too); every other module and every tensor
is shared with the loaded model. Each patch then changes its owner in the copy: a full delta
merges into a new tensor (:class:`WeightDelta`, :class:`WeightPatchSum`); a low-rank update left
unmerged is attached to the copied Linear (``low_rank``), which adds it where it computes. Building a
view copies no weight data beyond the merged tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..errors import InputError
from .finite import is_finite


class WeightPatch(Protocol):
    terms: tuple  # (update, strength) pairs: full deltas or LowRank

    def apply(self, owner: nn.Module, name: str, compute_dtype: torch.dtype) -> None:
        """Change ``owner`` (a per-render copy) so that its tensor ``name`` computes as patched."""
        ...


@dataclass(frozen=True)
class LowRank:
    """A low-rank update ``scale * up @ down``: up ``[out, r]``, down ``[r, in]`` (a conv's down ``[r, in, *k]``)."""

    up: torch.Tensor
    down: torch.Tensor
    scale: float = 1.0

    def delta(self, device: torch.device) -> torch.Tensor:
        """The full update in fp32, shaped as the weight: ``[out, in]`` (or ``[out, in, *k]``)."""
        up, down = (t.to(device=device, dtype=torch.float32) for t in (self.up, self.down))
        return (self.scale * (up.flatten(1) @ down.flatten(1))).reshape(up.shape[0], *down.shape[1:])


Term = tuple["torch.Tensor | LowRank", float]
"""One update of a tensor and its strength: a full delta, or a low-rank pair."""


@dataclass(frozen=True)
class WeightPatchSum:
    """``tensor + sum(strength * update)`` for one parameter: the LoRAs (and full deltas) stacked on it.

    ``unmerged``: None chooses: low-rank updates of an 8-bit (fp8, scaled fp8) or quantized Linear weight
    are added where the Linear computes (``x down^T up^T``: no new full-size weight, a small per-step
    cost); everything else is merged into a new tensor, made in fp32 from the weight as it computes and
    kept in the weight's own dtype (the compute dtype for 8-bit weights): no per-step cost. True / False
    force the low-rank updates of every Linear weight one way; full deltas, biases and other tensors
    always merge.
    """

    terms: tuple[Term, ...]
    unmerged: bool | None = None

    def apply(self, owner: nn.Module, name: str, compute_dtype: torch.dtype) -> None:
        weight = owner._parameters[name]
        low_rank, merged = split_terms(self, owner, name)
        for update, strength in low_rank:
            down, up = (t.to(device=weight.device, dtype=compute_dtype) for t in (update.down, update.up))
            owner.add_low_rank(down, up, update.scale * strength)  # the view's copy only
        if merged:
            _merge(owner, name, merged, compute_dtype)

    def digest_parts(self):
        """(strength, scale, tensors) of each term, for a render's identity."""
        for update, strength in self.terms:
            if isinstance(update, LowRank):
                yield strength, update.scale, (update.up, update.down)
            else:
                yield strength, 1.0, (update,)


def split_terms(patch: WeightPatch, owner: nn.Module, name: str) -> tuple[list[Term], list[Term]]:
    """``patch``'s terms on ``owner``'s tensor ``name`` as (low-rank terms left unmerged, terms merged), by the rule
    of :class:`WeightPatchSum` (a patch without an ``unmerged`` choice: None)."""
    weight = owner._parameters[name]
    choice = getattr(patch, "unmerged", None)
    can_unmerge = name == "weight" and hasattr(owner, "low_rank")  # a Linear's weight
    unmerged = can_unmerge and (choice if choice is not None else (
        weight.dtype.itemsize == 1 or getattr(owner, "quantized", False)))
    low_rank = [(u, s) for u, s in patch.terms if unmerged and isinstance(u, LowRank)]
    return low_rank, [(u, s) for u, s in patch.terms if not (unmerged and isinstance(u, LowRank))]


def _merged_dtype(owner: nn.Module, name: str, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype a merged tensor is kept in: the weight's own, the compute dtype for 8-bit or quantized weights."""
    stored = owner._parameters[name].dtype
    quantized = name == "weight" and getattr(owner, "quantized", False)
    return compute_dtype if (stored.itemsize == 1 or quantized) else stored


def view_bytes_change(model: nn.Module, name: str, patch: WeightPatch, compute_dtype: torch.dtype) -> int:
    """How many bytes more ``model``'s patched view holds for tensor ``name`` than ``model`` (exactly what
    :func:`patched_view` makes): the unmerged low-rank pairs in the compute dtype, and a merged tensor in its kept
    dtype in place of the stored one (a quantized weight's packed blocks, a scaled-fp8 weight's scale)."""
    path, _, leaf = name.rpartition(".")
    owner = model.get_submodule(path)
    weight = owner._parameters[leaf]
    low_rank, merged = split_terms(patch, owner, leaf)
    change = sum((u.down.numel() + u.up.numel()) * compute_dtype.itemsize for u, _ in low_rank)
    if merged:
        quantized = leaf == "weight" and getattr(owner, "quantized", False)
        numel = math.prod(owner.weight_shape) if quantized else weight.numel()
        scale = getattr(owner, "scale_weight", None) if leaf == "weight" else None
        change += numel * _merged_dtype(owner, leaf, compute_dtype).itemsize - weight.numel() * weight.element_size()
        change -= 0 if scale is None else scale.numel() * scale.element_size()
    return change


def _merge(owner: nn.Module, name: str, terms, compute_dtype: torch.dtype) -> None:
    weight = owner._parameters[name]
    dequantize = owner.dequantized_weight if name == "weight" and getattr(owner, "quantized", False) else None
    if dequantize is not None:  # a quantized layer: its weight as it computes, then a plain tensor
        merged = dequantize(torch.float32)
    else:
        merged = weight.float()
        scale = getattr(owner, "scale_weight", None) if name == "weight" else None
        if scale is not None:  # scaled fp8: the stored weight times its per-layer scale
            merged = merged * scale.float().reshape(-1, *([1] * (weight.dim() - 1)))
    if name == "weight" and getattr(owner, "scale_weight", None) is not None:
        owner._buffers["scale_weight"] = None
    for update, strength in terms:
        delta = update.delta(weight.device) if isinstance(update, LowRank) else \
            update.to(device=weight.device, dtype=torch.float32)
        merged = merged + strength * delta
    keep = _merged_dtype(owner, name, compute_dtype)
    owner._parameters[name] = nn.Parameter(merged.to(keep), requires_grad=False)
    if dequantize is not None:
        owner.quantized = False


@dataclass(frozen=True)
class WeightDelta:
    """``tensor + strength * delta`` for one parameter (a full delta, as LoRA ``.diff`` / ``.diff_b`` keys);
    merged as :class:`WeightPatchSum` merges."""

    delta: torch.Tensor
    strength: float = 1.0

    @property
    def terms(self) -> tuple[Term, ...]:
        return ((self.delta, self.strength),)

    def apply(self, owner: nn.Module, name: str, compute_dtype: torch.dtype) -> None:
        _merge(owner, name, self.terms, compute_dtype)

    def digest_parts(self):
        yield self.strength, 1.0, (self.delta,)


def stack_patches(*groups: Mapping[str, WeightPatch]) -> dict[str, WeightPatch]:
    """Patches of several sources on one model as one mapping; two on the same tensor are summed."""
    out: dict[str, WeightPatch] = {}
    for group in groups:
        for name, patch in group.items():
            if name in out:
                first = out[name]
                out[name] = WeightPatchSum(first.terms + patch.terms, getattr(first, "unmerged", None))
            else:
                out[name] = patch
    return out


def shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing every tensor and child with ``module``, with dicts of its own."""
    twin = copy.copy(module)
    twin._parameters = dict(module._parameters)
    twin._buffers = dict(module._buffers)
    twin._modules = dict(module._modules)
    return twin


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape as the network uses it (a quantized layer's weight: its logical shape)."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        if getattr(module, "quantized", False) and getattr(module, "weight_shape", None) is not None:
            shapes[f"{name}.weight" if name else "weight"] = tuple(module.weight_shape)
    return shapes


def check_patches(model: nn.Module, patches: Mapping[str, WeightPatch]) -> None:
    """Raise :class:`InputError` listing patch names that are not parameters of ``model`` or misfit in shape."""
    params = parameter_shapes(model)
    unknown = sorted(k for k in patches if k not in params)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise InputError(f"{len(unknown)} patched tensor(s) are not in this model: {shown}")
    for name, patch in patches.items():
        for update, _ in patch.terms:
            shape = tuple(update.up.shape[:1]) + tuple(update.down.shape[1:]) if isinstance(update, LowRank) \
                else tuple(update.shape)
            if shape != params[name]:
                raise InputError(f"patch for {name} has shape {shape}; the model's tensor is "
                                 f"{params[name]} (a patch made for another model size?)")


def patched_view(model: nn.Module, patches: Mapping[str, WeightPatch], compute_dtype: torch.dtype) -> nn.Module:
    """``model`` as ``patches`` change it, sharing everything unpatched; ``model`` itself is not modified.

    patches: ``{parameter name (as in model.named_parameters()): patch}``.
    """
    check_patches(model, patches)
    if not patches:
        return model
    view = shallow_copy(model)
    copies: dict[str, nn.Module] = {"": view}
    for name in sorted(patches):
        path, _, leaf = name.rpartition(".")
        patches[name].apply(copy_along(copies, path), leaf, compute_dtype)
    return view


def copy_along(copies: dict[str, nn.Module], path: str) -> nn.Module:
    """The module at dotted ``path`` of the view ``copies[""]``, with it and every module on the way there a
    :func:`shallow_copy` put into the view in place of the original (once: ``copies`` maps the paths copied)."""
    owner, prefix = copies[""], ""
    for part in path.split(".") if path else ():
        prefix = f"{prefix}.{part}" if prefix else part
        if prefix not in copies:
            copies[prefix] = shallow_copy(owner._modules[part])
            owner._modules[part] = copies[prefix]
        owner = copies[prefix]
    return owner


def nonfinite_patches(model: nn.Module, patches: Mapping[str, WeightPatch], compute_dtype: torch.dtype,
                      most: int = 5) -> list[str]:
    """Names of (up to ``most``) tensors of ``model`` that ``patches`` make NaN / Inf once merged in
    ``compute_dtype`` (an overflow of a strong LoRA): a diagnosis after a render went non-finite; ``model``
    is not changed."""
    found = []
    for name in sorted(patches):
        path, _, leaf = name.rpartition(".")
        owner = shallow_copy(model.get_submodule(path))
        WeightPatchSum(patches[name].terms, unmerged=False).apply(owner, leaf, compute_dtype)
        merged = owner._parameters[leaf]
        if not is_finite(merged.to(compute_dtype)):
            found.append(name)
            if len(found) >= most:
                break
    return found
