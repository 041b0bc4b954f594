"""LoRA files for the Wan2.1 DiT, in every key layout artists have, read into updates by official name.

Layouts (one conversion table, :func:`lora_key` and :func:`parse_lora_key`, tested both ways):

- official module names, bare or under ``diffusion_model.`` / ``model.diffusion_model.`` (ComfyUI,
  musubi-tuner's ComfyUI export and most trainers): ``<module>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha``, or ``.lora_A.weight`` / ``.lora_B.weight``;
- kohya: ``lora_unet_<module with _ for .>.lora_down.weight`` ...;
- diffusers / PEFT: ``transformer.<diffusers module>.lora_A.weight`` / ``.lora_B.weight`` / ``.lora_B.bias``;
- full deltas: ``<module>.diff`` (the weight, or the parameter itself such as ``blocks.0.modulation``) and
  ``<module>.diff_b`` (the bias), which the step-distill LoRAs carry for norms, embeddings and the head.

A low-rank pair changes ``<module>.weight`` by ``(alpha / rank) up @ down`` (alpha = rank when absent).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.config import DiTConfig
from ..models.dit import WanDiT
from ..runtime.finite import is_finite
from .checkpoint import open_state_dict
from .dit import dit_key_to_diffusers

log = logging.getLogger(__name__)

FORMATS = ("official", "official_AB", "kohya", "diffusers")
OFFICIAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
KOHYA_PREFIX = "lora_unet_"
DIFFUSERS_PREFIX = "transformer."

# role -> the part name each layout writes after the module name
_PARTS = {
    "official": {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha", "diff": "diff",
                 "diff_b": "diff_b"},
    "official_AB": {"down": "lora_A.weight", "up": "lora_B.weight", "alpha": "alpha", "diff": "diff",
                    "diff_b": "diff_b"},
    "kohya": {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha", "diff": "diff",
              "diff_b": "diff_b"},
    "diffusers": {"down": "lora_A.weight", "up": "lora_B.weight", "alpha": "alpha", "diff_b": "lora_B.bias"},
}
_ROLES = {part: role for parts in _PARTS.values() for role, part in parts.items()}
IMAGE_BRANCH = re.compile(r"(\.k_img|\.v_img|\.norm_k_img|^img_emb\.)")


@dataclass(frozen=True)
class ModuleNames:
    """Official module and parameter names of a DiT with ``layers`` blocks (all variants together) and the
    other layouts' names for them."""

    layers: int
    params: frozenset[str] = field(init=False)
    kohya: dict[str, str] = field(init=False)  # "blocks_0_self_attn_q" -> "blocks.0.self_attn.q"
    diffusers: dict[str, str] = field(init=False)  # "blocks.0.attn1.to_q" -> "blocks.0.self_attn.q"

    def __post_init__(self) -> None:
        with torch.device("meta"):
            superset = WanDiT(DiTConfig("flf2v", dim=128, ffn_dim=128, num_layers=self.layers, in_dim=36))
        params = frozenset(name for name, _ in superset.named_parameters())
        modules = {name.rpartition(".")[0] for name in params} | params  # a bare parameter may take a .diff
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "kohya", {m.replace(".", "_"): m for m in modules})
        object.__setattr__(self, "diffusers", {dit_key_to_diffusers(p).rpartition(".")[0]: p.rpartition(".")[0]
                                               for p in params if p.endswith((".weight", ".bias"))})

    def to_diffusers(self, module: str) -> str:
        return dit_key_to_diffusers(module + ".weight").rpartition(".")[0]


def lora_key(module: str, role: str, fmt: str, names: ModuleNames) -> str:
    """The key a LoRA file of layout ``fmt`` uses for ``role`` (down, up, alpha, diff, diff_b) of an official
    module name."""
    part = _PARTS[fmt][role]
    if fmt in ("official", "official_AB"):
        return f"diffusion_model.{module}.{part}"
    if fmt == "kohya":
        return f"{KOHYA_PREFIX}{module.replace('.', '_')}.{part}"
    return f"{DIFFUSERS_PREFIX}{names.to_diffusers(module)}.{part}"


def parse_lora_key(key: str, names: ModuleNames) -> tuple[str, str] | None:
    """(official module name, role) of a LoRA file's key, or None for a key of no known layout."""
    part = next((p for p in sorted(_ROLES, key=len, reverse=True) if key.endswith("." + p)), None)  # longest first
    if part is None:
        return None
    role, module = _ROLES[part], _module(key[: -len(part) - 1], names)
    return None if module is None else (module, role)


def _module(stem: str, names: ModuleNames) -> str | None:
    """The official module (or parameter) name a key's stem names in any layout, or None."""
    if stem.startswith(KOHYA_PREFIX):
        module = names.kohya.get(stem[len(KOHYA_PREFIX):])
    elif stem.startswith(DIFFUSERS_PREFIX):
        module = names.diffusers.get(stem[len(DIFFUSERS_PREFIX):])
    else:
        stem = next((stem[len(p):] for p in OFFICIAL_PREFIXES if stem.startswith(p)), stem)
        module = stem if (stem + ".weight" in names.params or stem + ".bias" in names.params
                          or stem in names.params) else None
    return module


@dataclass(frozen=True)
class LowRankPair:
    """One module's low-rank update: ``scale * up @ down``; up ``[out, r]``, down ``[r, in]`` (or conv shapes)."""

    up: torch.Tensor
    down: torch.Tensor
    scale: float


@dataclass
class LoraFile:
    """A LoRA read from a file: per official parameter name, a low-rank pair or a full delta."""

    name: str
    pairs: dict[str, LowRankPair]  # "<module>.weight" -> pair
    deltas: dict[str, torch.Tensor]  # parameter name -> full delta
    ignored: list[str]  # keys of the documented harmless group (all-zero deltas of norms without parameters)

    @property
    def targets(self) -> list[str]:
        return sorted({*self.pairs, *self.deltas})

    @property
    def needs_image_branch(self) -> bool:
        return any(IMAGE_BRANCH.search(t) for t in self.targets)


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read a Wan2.1 LoRA (safetensors, or a weights-only .pt/.pth). Every key is read into an update or
    reported: unknown keys (another network's LoRA, DoRA scales) raise :class:`CheckpointError` listing them,
    and so do NaN / Inf values, low-rank pairs whose ranks disagree and alphas that are not one number.
    """
    path = Path(path)
    state = open_state_dict(path)
    layers = 1 + max((int(m.group(1)) for k in state if (m := re.search(r"blocks[._](\d+)[._]", k))), default=-1)
    names = ModuleNames(max(layers, 1))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown, ignored = [], []
    for key, value in state.items():
        parsed = parse_lora_key(key, names)
        if parsed is None:
            if re.search(r"norm", key) and key.endswith((".diff", ".diff_b")) and not value.any():
                ignored.append(key)
            else:
                unknown.append(key)
            continue
        parts.setdefault(parsed[0], {})[parsed[1]] = value
    if unknown:
        raise CheckpointError(f"{path.name}: {len(unknown)} key(s) are not a Wan2.1 DiT LoRA's: {_listing(unknown)}. "
                              "Is it a LoRA for another model (Wan2.2, Hunyuan, an image model) or a DoRA?")
    if ignored:
        log.warning("%s: %d all-zero norm delta(s) for norms without parameters ignored (%s)", path.name,
                    len(ignored), _listing(ignored))
    _check_values(path.name, parts)
    pairs, deltas = _collect(path.name, parts, names)
    return LoraFile(path.name, pairs, deltas, ignored)


def _check_values(name: str, parts: dict[str, dict[str, torch.Tensor]]) -> None:
    """:class:`CheckpointError` naming the modules whose updates hold NaN / Inf (a damaged or diverged file)."""
    bad = [f"{module} ({role})" for module, roles in parts.items() for role, value in roles.items()
           if not is_finite(value)]
    if bad:
        raise CheckpointError(f"{name}: {len(bad)} update(s) hold NaN/Inf values: {_listing(bad)}; the LoRA file is "
                              "damaged or its training diverged: fetch it again or use another")


def _pair(name: str, module: str, roles: dict[str, torch.Tensor]) -> LowRankPair:
    """The low-rank pair of ``module``: down ``[r, in, ...]`` and up ``[out, r, ...]`` of one rank r, alpha one
    number (r when absent)."""
    down, up = roles["down"], roles["up"]
    if down.dim() < 2 or up.dim() < 2 or up.shape[1] != down.shape[0]:
        raise CheckpointError(f"{name}: the low-rank pair of {module} does not agree: down is {tuple(down.shape)}, "
                              f"up is {tuple(up.shape)} (down [rank, in], up [out, rank]); the file is damaged")
    rank = down.shape[0]
    alpha = roles.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        raise CheckpointError(f"{name}: the alpha of {module} has {alpha.numel()} values {tuple(alpha.shape)}, "
                              "it must be one number; the file is damaged")
    return LowRankPair(up, down, (float(alpha) if alpha is not None else float(rank)) / rank)


def _collect(name: str, parts: dict[str, dict[str, torch.Tensor]], names: ModuleNames):
    pairs, deltas, incomplete = {}, {}, []
    for module, roles in parts.items():
        if "down" in roles or "up" in roles:
            if "down" not in roles or "up" not in roles:
                incomplete.append(module)
                continue
            pairs[module + ".weight"] = _pair(name, module, roles)
        elif "alpha" in roles:
            incomplete.append(module)
        if "diff" in roles:
            target = module + ".weight" if module + ".weight" in names.params else module
            deltas[target] = roles["diff"]
        if "diff_b" in roles:
            deltas[module + ".bias"] = roles["diff_b"]
    if incomplete:
        raise CheckpointError(f"{name}: {len(incomplete)} module(s) have half a low-rank pair (down without up, "
                              f"or an alpha alone): {_listing(incomplete)}; the file is damaged")
    return pairs, deltas


def _listing(keys: list[str], shown: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:shown]) + (f", ... ({len(keys) - shown} more)" if len(keys) > shown else "")
