"""``load_vae``: the Wan2.1 VAE from the official ``.pth``, ComfyUI's safetensors or diffusers' layout, and the
Wan2.2 VAE (TI2V-5B) from its official / ComfyUI file."""

from __future__ import annotations

import logging
import os
import re

import torch

from ..errors import CheckpointError
from ..models.vae import VAEConfig, WanVAE
from ..models.vae22 import VAE22Config, WanVAE22
from ..runtime.placement import resolve_placement
from .checkpoint import check_keys, open_state_dict, place, require_kind

log = logging.getLogger(__name__)

_RESIDUAL = (("residual.0.gamma", "norm1.gamma"), ("residual.2.", "conv1."), ("residual.3.gamma", "norm2.gamma"),
             ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))


def _key_to_diffusers(key: str, levels) -> str:
    """The diffusers ``AutoencoderKLWan`` name of an official VAE key: the parts both Wan VAEs share (quant convs,
    input / output convs and norm, middle blocks, residual blocks) here, ``levels(part, rest)`` the resolution
    levels, which differ."""
    for old, new in (("conv1.", "quant_conv."), ("conv2.", "post_quant_conv.")):
        if key.startswith(old):
            return new + key[len(old):]
    part, _, rest = key.partition(".")
    rest = re.sub(r"^conv1\.", "conv_in.", rest)
    rest = re.sub(r"^head\.0\.", "norm_out.", rest)
    rest = re.sub(r"^head\.2\.", "conv_out.", rest)
    rest = re.sub(r"^middle\.([02])\.", lambda m: f"mid_block.resnets.{int(m.group(1)) // 2}.", rest)
    rest = re.sub(r"^middle\.1\.", "mid_block.attentions.0.", rest)
    rest = levels(part, rest)
    for old, new in _RESIDUAL:
        rest = rest.replace(old, new)
    return f"{part}.{rest}"


def vae_key_to_diffusers(key: str, cfg: VAEConfig) -> str:
    """The diffusers ``AutoencoderKLWan`` name of an official Wan2.1 VAE key."""
    per_level = cfg.num_res_blocks + 2  # decoder level: num_res_blocks + 1 residual blocks, then an upsampler

    def up(m: re.Match) -> str:
        level, pos = divmod(int(m.group(1)), per_level)
        return f"up_blocks.{level}." + ("upsamplers.0." if pos == per_level - 1 else f"resnets.{pos}.")

    def levels(_part: str, rest: str) -> str:
        return re.sub(r"^upsamples\.(\d+)\.", up, re.sub(r"^downsamples\.", "down_blocks.", rest))

    return _key_to_diffusers(key, levels)


def _to_official(state: dict[str, torch.Tensor], cfg: VAEConfig) -> dict[str, torch.Tensor]:
    if not any(k.startswith(("quant_conv.", "post_quant_conv.")) for k in state):
        return state
    with torch.device("meta"):
        keys = WanVAE(cfg).state_dict().keys()
    table = {vae_key_to_diffusers(k, cfg): k for k in keys}
    return {table.get(k, k): v for k, v in state.items()}


def detect_vae(shapes, path) -> VAEConfig:
    """Base width and latent channels from the tensors (the rest is fixed for Wan2.1)."""
    for key in ("encoder.conv1.weight", "encoder.conv_in.weight"):
        if key in shapes:
            base = shapes[key][0]
            break
    else:
        raise CheckpointError(f"{path}: no encoder input convolution; not a Wan2.1 VAE")
    z = next((shapes[k][0] for k in ("conv2.weight", "post_quant_conv.weight") if k in shapes), None)
    if z is None:
        raise CheckpointError(f"{path}: no post-quantization convolution (conv2); not a Wan2.1 VAE")
    return VAEConfig(base_dim=base, z_dim=z)


def load_vae(path: str | os.PathLike, *, storage_dtype: torch.dtype | str | None = None,
             compute_dtype: torch.dtype | str | None = None, device="cpu") -> WanVAE:
    """Load the Wan2.1 VAE. Its convolutions compute in the dtype they are stored in, so storage and
    compute are one dtype (either argument sets it; default fp32 on CPU, bf16 elsewhere; see
    :mod:`wan_core.runtime.placement`).

    Raises :class:`CheckpointError` naming the file if it is truncated, of another kind, or does
    not match (listing missing / unexpected / mismatched keys).
    """
    placement = resolve_placement("vae", storage_dtype, compute_dtype, device)
    state = open_state_dict(path)
    require_kind(path, state.keys(), "vae")
    device, dtype = placement.device, placement.compute_dtype
    if any(k in state and state[k].shape[1] == 12 for k in (WAN22_ENCODER_INPUT, "encoder.conv_in.weight")):
        # the Wan2.2 VAE (official or diffusers names): 2x2 patches of RGB in
        return _load_wan22(path, state, device, dtype)
    cfg = detect_vae({k: v.shape for k, v in state.items()}, path)
    return _built(WanVAE, cfg, _to_official(state, cfg), path, device, dtype, "the Wan2.1 VAE")


def _built(cls, cfg, state: dict[str, torch.Tensor], path, device, dtype: torch.dtype, what: str):
    """``cls(cfg)`` built on ``meta`` and given the file's tensors (checked by name and shape) on ``device``."""
    with torch.device("meta"):
        model = cls(cfg, compute_dtype=dtype)
    check_keys(path, {k: v.shape for k, v in model.state_dict().items()}, state, what)
    model.load_state_dict({k: place(v, device, dtype) for k, v in state.items()}, assign=True, strict=True)
    log.info("loaded %s (%s) from %s as %s", what, cfg, path, dtype)
    return model.eval().requires_grad_(False)


WAN22_ENCODER_INPUT = "encoder.conv1.weight"
"""Its input channels tell the VAEs apart: 3 (Wan2.1: RGB), 12 (Wan2.2: 2x2 patches of RGB)."""


def vae22_key_to_diffusers(key: str, cfg: VAE22Config) -> str:
    """The diffusers ``AutoencoderKLWan`` (``is_residual``) name of an official Wan2.2 VAE key."""

    def levels(part: str, rest: str) -> str:
        blocks = cfg.num_res_blocks if part == "encoder" else cfg.num_res_blocks + 1  # then the resampler

        def level(m: re.Match) -> str:
            kind, index, pos = m.group(1), m.group(2), int(m.group(3))
            inner = f"{kind}sampler." if pos == blocks else f"resnets.{pos}."
            return f"{kind}_blocks.{index}.{inner}"

        return re.sub(r"^(down|up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.", level, rest)

    return _key_to_diffusers(key, levels)


def _load_wan22(path, state: dict[str, torch.Tensor], device, dtype: torch.dtype) -> WanVAE22:
    """The Wan2.2 VAE (official / ComfyUI keys, or diffusers' ``AutoencoderKLWan`` names), its widths and latent
    channels read from the tensors."""
    if "post_quant_conv.weight" in state:  # the diffusers layout: back to the official names
        shape = state["decoder.conv_in.weight"].shape
        cfg = VAE22Config(base_dim=state["encoder.conv_in.weight"].shape[0], z_dim=shape[1],
                          decoder_dim=shape[0] // VAE22Config().dim_mult[-1])
        with torch.device("meta"):
            table = {vae22_key_to_diffusers(k, cfg): k for k in WanVAE22(cfg).state_dict()}
        state = {table.get(k, k): v for k, v in state.items()}
    for key in ("decoder.conv1.weight", "conv2.weight"):
        if key not in state:
            raise CheckpointError(f"{path}: a Wan2.2 VAE encoder but no {key!r}; the file is incomplete")
    mult = VAE22Config().dim_mult
    cfg = VAE22Config(base_dim=state[WAN22_ENCODER_INPUT].shape[0], z_dim=state["conv2.weight"].shape[0],
                      decoder_dim=state["decoder.conv1.weight"].shape[0] // mult[-1])
    return _built(WanVAE22, cfg, state, path, device, dtype, "the Wan2.2 VAE")
