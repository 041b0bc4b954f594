"""``apply_loras``: a DiT with LoRAs for its renders, the loaded model untouched.

The returned handle shares every module and tensor with the loaded model and carries the LoRAs as
weight patches; each render builds its patched view from them (:meth:`RenderContext.patched`) and drops
it at the end. So changing a strength or the stack never reloads or changes the model, and a render
without the handle is the plain model's.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .errors import InputError
from .loading.lora import IMAGE_BRANCH, LoraFile, read_lora
from .models.dit import WanDiT
from .runtime.patches import LowRank, WeightPatchSum, parameter_shapes, stack_patches

log = logging.getLogger(__name__)

LoraSpec = tuple["str | os.PathLike | LoraFile", float]


def apply_loras(model: WanDiT, loras: Sequence[LoraSpec], unmerged: bool | None = None) -> WanDiT:
    """``model`` with ``loras`` (``[(file or LoraFile, strength), ...]``) added to the LoRAs it already has.

    unmerged: None chooses per tensor (merged into fp32 / bf16 / fp16 weights, added where the Linear
    computes for fp8, scaled-fp8 and quantized weights), and leaves all unmerged when merging would copy
    more than :data:`MERGE_LIMIT_BYTES` of weights per render; True / False force one way.
    A LoRA that does not fit the model (another width, an image-to-video LoRA on a text-to-video model,
    blocks the model lacks) raises :class:`InputError` naming both, before any render. Strength 0 adds
    nothing.
    """
    if getattr(model, "is_expert_pair", False):
        raise InputError("LoRAs go on each expert of a Wan2.2 pair (each has its own, e.g. the Lightning LoRAs made "
                         "for the high- and the low-noise expert): load them onto each model before the Expert Pair")
    for item, strength in loras:
        check_lora_strength(item, strength)
    patches, names = {}, []
    for item, strength in loras:
        lora = skip_image_branch(item if isinstance(item, LoraFile) else read_lora(item), model.config)
        check_lora_fits(lora, model)
        names.append((lora.name, float(strength)))
        if strength:
            patches = stack_patches(patches, lora_patches(lora, float(strength), unmerged))
    handle = copy.copy(model)  # a new object sharing the model's modules and tensors; the model is not touched
    handle.weight_patches = _choose_merging(model, stack_patches(getattr(model, "weight_patches", None) or {},
                                                                 patches), unmerged)
    handle.loras = (*getattr(model, "loras", ()), *names)
    handle.lora_sources = (*getattr(model, "lora_sources", ()), *((None if isinstance(item, LoraFile) else
                                                                  str(Path(item).resolve()), float(strength), unmerged)
                                                                 for item, strength in loras))
    log.info("LoRAs %s on %s: %d tensors patched", names, model.config.label, len(patches))
    return handle


def skip_image_branch(lora: LoraFile, config) -> LoraFile:
    """``lora`` without its CLIP image-branch updates (k_img, v_img, img_emb) when ``config`` is an image-to-video
    model without that branch (a Wan2.1 i2v LoRA on a Wan2.2 i2v expert): one warning names what was skipped.
    Any other model gets ``lora`` unchanged (a text-to-video model refuses it in :func:`check_lora_fits`)."""
    if not (lora.needs_image_branch and config.takes_image_latents and not config.has_image_branch):
        return lora
    skipped = [t for t in lora.targets if IMAGE_BRANCH.search(t)]
    log.warning("LoRA %s: %d updates of the CLIP image branch skipped, %s has none (Wan2.2 takes the image through "
                "its latents): %s%s", lora.name, len(skipped), config.label, ", ".join(skipped[:6]),
                f", ... ({len(skipped) - 6} more)" if len(skipped) > 6 else "")
    keep = set(lora.targets) - set(skipped)
    return replace(lora, pairs={k: v for k, v in lora.pairs.items() if k in keep},
                   deltas={k: v for k, v in lora.deltas.items() if k in keep})


MERGE_LIMIT_BYTES = 4 * 2**30
"""Merged LoRAs give each render a copy of every patched weight: above this many bytes of copies (a 14B
model in bf16 would need 26 GiB more) the low-rank terms stay unmerged (+~2-5% compute per step instead)."""


def _choose_merging(model: WanDiT, patches: dict, unmerged: bool | None) -> dict:
    """``patches`` with their low-rank terms left unmerged when merging them would copy more than
    :data:`MERGE_LIMIT_BYTES` of weights (only when the caller did not choose)."""
    if unmerged is not None or not patches:
        return patches
    params = dict(model.named_parameters())
    copied = sum(params[name].numel() * params[name].element_size() for name, patch in patches.items()
                 if name in params and params[name].element_size() > 1
                 and any(isinstance(update, LowRank) for update, _ in patch.terms))
    if copied <= MERGE_LIMIT_BYTES:
        return patches
    log.info("LoRA low-rank terms stay unmerged: merging would copy %.1f GiB of weights per render (limit %.0f GiB)",
             copied / 2**30, MERGE_LIMIT_BYTES / 2**30)
    return {name: WeightPatchSum(patch.terms, True) for name, patch in patches.items()}


def lora_patches(lora: LoraFile, strength: float, unmerged: bool | None = None) -> dict[str, WeightPatchSum]:
    """One LoRA at ``strength`` as weight patches ``{parameter name: patch}``."""
    out = {name: WeightPatchSum(((LowRank(p.up, p.down, p.scale), strength),), unmerged)
           for name, p in lora.pairs.items()}
    for name, delta in lora.deltas.items():
        out = stack_patches(out, {name: WeightPatchSum(((delta, strength),), unmerged)})
    return out


def check_lora_strength(lora, strength) -> None:
    """Raise :class:`InputError` unless ``strength`` (of ``lora``: a file or :class:`LoraFile`) is a finite
    number."""
    name = lora.name if isinstance(lora, LoraFile) else os.path.basename(str(lora))
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise InputError(f"LoRA {name} strength must be a finite number (1.0 is the trained effect, 0 none), "
                         f"got {strength!r}")


def check_lora_fits(lora: LoraFile, model: WanDiT) -> None:
    """Raise :class:`InputError` unless every update of ``lora`` has a tensor of its shape in ``model``."""
    cfg = model.config
    if lora.needs_image_branch and not cfg.has_image_branch:
        raise InputError(f"LoRA {lora.name} is for an image-to-video model (it changes the image branch: k_img, "
                         f"v_img, img_emb); the model is {cfg.label}. Use it with an i2v / flf2v model.")
    shapes = parameter_shapes(model)
    missing = [t for t in lora.targets if t not in shapes]
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
        raise InputError(f"LoRA {lora.name} changes {len(missing)} tensor(s) that {cfg.label} "
                         f"({cfg.num_layers} blocks) does not have: {shown}")
    for name in lora.targets:
        pair = lora.pairs.get(name)
        want = (tuple(pair.up.shape[:1]) + tuple(pair.down.shape[1:]) if pair is not None
                else tuple(lora.deltas[name].shape))
        if want != shapes[name]:
            raise InputError(f"LoRA {lora.name} does not fit {cfg.label} (width {cfg.dim}): its update of {name} "
                             f"is {want}, the model's tensor is {shapes[name]}; it was made for another model "
                             f"size (width {_lora_width(lora) or '?'})")


def _lora_width(lora: LoraFile) -> int | None:
    for name, pair in lora.pairs.items():
        if name.endswith("self_attn.q.weight"):
            return int(pair.up.shape[0])
    return None
