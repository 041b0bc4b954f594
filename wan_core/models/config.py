"""Typed, frozen configs of the Wan2.1 DiT, the real presets, and detection from tensor shapes.

A checkpoint's config is derived from its key names and shapes (DESIGN §4), never from a
hard-coded model size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ..constants import CLIP_DIM, CLIP_TOKENS, LATENT_CHANNELS, PATCH_SIZE, TEXT_DIM, TEXT_LEN, WAN22_LATENT_CHANNELS
from ..errors import CheckpointError, InputError

HEAD_DIM = 128
"""Every Wan2.1 DiT uses attention heads of 128 channels: heads = dim // 128."""

MODEL_TYPES = ("t2v", "i2v", "flf2v", "vace", "ti2v")

VACE_CHANNELS = 96
"""Channels of a VACE context: 16 inactive + 16 reactive latents and 64 mask channels (an 8x8 pixel patch)."""

MAX_ROPE_POSITIONS = 1024
"""Rows of the rotary tables: the longest frame, height or width token axis a DiT supports."""

KNOWN_DEPTHS = {1536: 30, 5120: 40, 3072: 30}
"""Blocks of the released DiTs by width (Wan2.1 1.3B: 30, 14B and Wan2.2 A14B: 40, Wan2.2 TI2V-5B: 30); other widths
are custom or test models."""



@dataclass(frozen=True)
class DiTConfig:
    """Architecture of one Wan2.1 diffusion transformer."""

    model_type: str = "t2v"  # "t2v", "i2v" (image latents in y), "flf2v" (start and end images), "vace", or "ti2v"
    #                           (Wan2.2 5B: 48-channel latents, text or image to video, timesteps per latent frame)
    dim: int = 1536  # transformer width
    ffn_dim: int = 8960  # hidden width of each block's feed-forward
    num_layers: int = 30  # number of transformer blocks
    in_dim: int = LATENT_CHANNELS  # input channels: 16 (t2v) or 36 = 16 noise + 4 mask + 16 image latents
    out_dim: int = LATENT_CHANNELS  # predicted flow channels
    text_dim: int = TEXT_DIM  # width of the text encoder states
    text_len: int = TEXT_LEN  # text tokens after zero padding
    freq_dim: int = 256  # width of the sinusoidal time embedding
    eps: float = 1e-6  # epsilon of every norm
    patch_size: tuple[int, int, int] = PATCH_SIZE  # (t, h, w) patch in latent cells
    clip_dim: int = CLIP_DIM  # width of the CLIP image tokens (Wan2.1 i2v / flf2v); 0: no CLIP branch (Wan2.2 i2v)
    vace_layers: tuple[int, ...] = ()  # VACE: the blocks after which each VACE block's hint is added
    vace_in_dim: int = VACE_CHANNELS  # VACE: channels of the VACE context

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if (self.model_type == "vace") != bool(self.vace_layers) or (self.vace_layers and (
                self.vace_layers[0] != 0 or max(self.vace_layers) >= self.num_layers)):
            raise ValueError(f"a vace model needs vace_layers starting at 0 below num_layers (and only it has them), "
                             f"got {self.model_type!r} with {self.vace_layers}")
        if self.dim % HEAD_DIM:
            raise ValueError(f"dim must be a multiple of {HEAD_DIM} (heads = dim // {HEAD_DIM}), got {self.dim}")

    @property
    def num_heads(self) -> int:
        return self.dim // HEAD_DIM

    @property
    def head_dim(self) -> int:
        return HEAD_DIM

    @property
    def takes_image_latents(self) -> bool:
        """True for i2v / flf2v: the model takes ``y`` (the image's mask and latents beside the noise)."""
        return self.model_type in ("i2v", "flf2v")

    @property
    def has_image_branch(self) -> bool:
        """True for Wan2.1 i2v / flf2v: cross-attention has k_img / v_img and the model takes CLIP tokens (the
        Wan2.2 A14B image-to-video experts take the image through ``y`` only)."""
        return self.takes_image_latents and self.clip_dim > 0

    @property
    def clip_tokens(self) -> int:
        """CLIP tokens the model takes per sample: 257 (i2v) or 514 (flf2v: start and end image)."""
        return CLIP_TOKENS * (2 if self.model_type == "flf2v" else 1)

    def tokens(self, latent_shape) -> int:
        """Video tokens of a ``[B, C, F', h, w]`` latent after patching."""
        pt, ph, pw = self.patch_size
        return (latent_shape[2] // pt) * (latent_shape[3] // ph) * (latent_shape[4] // pw)

    def check_latent_shape(self, latent_shape) -> None:
        """Raise :class:`InputError` unless a ``[B, C, F', h, w]`` latent can be patched and position-encoded."""
        pt, ph, pw = self.patch_size
        _, _, f, h, w = latent_shape
        grid = (f // pt, h // ph, w // pw)
        if f % pt or h % ph or w % pw or min(grid) < 1 or max(grid) > MAX_ROPE_POSITIONS:
            raise InputError(f"latent size {(f, h, w)} (frames, height, width) must be whole patches of "
                             f"{self.patch_size} with at most {MAX_ROPE_POSITIONS} patches per axis: at most "
                             f"{(MAX_ROPE_POSITIONS - 1) * 4 + 1} frames and {MAX_ROPE_POSITIONS * 16} pixels a side")

    @property
    def label(self) -> str:
        for name, preset in PRESETS.items():
            if preset == self:
                return name
        return f"{self.model_type} dim {self.dim}, {self.num_layers} layers"


T2V_1_3B = DiTConfig("t2v", dim=1536, ffn_dim=8960, num_layers=30)
T2V_14B = DiTConfig("t2v", dim=5120, ffn_dim=13824, num_layers=40)
I2V_14B = DiTConfig("i2v", dim=5120, ffn_dim=13824, num_layers=40, in_dim=36)
FLF2V_14B = replace(I2V_14B, model_type="flf2v")
I2V_A14B = replace(I2V_14B, clip_dim=0)  # each Wan2.2 image-to-video expert (the text-to-video ones are t2v-14B)
TI2V_5B = DiTConfig("ti2v", dim=3072, ffn_dim=14336, num_layers=30, in_dim=WAN22_LATENT_CHANNELS,
                    out_dim=WAN22_LATENT_CHANNELS)
VACE_1_3B = replace(T2V_1_3B, model_type="vace", vace_layers=tuple(range(0, 30, 2)))
VACE_14B = replace(T2V_14B, model_type="vace", vace_layers=tuple(range(0, 40, 5)))

PRESETS: dict[str, DiTConfig] = {
    "t2v-1.3B": T2V_1_3B,
    "t2v-14B": T2V_14B,
    "i2v-14B": I2V_14B,
    "flf2v-14B": FLF2V_14B,
    "i2v-A14B": I2V_A14B,
    "ti2v-5B": TI2V_5B,
    "vace-1.3B": VACE_1_3B,
    "vace-14B": VACE_14B,
}

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_VACE_BLOCK = re.compile(r"^vace_blocks\.(\d+)\.")


def _shape(shapes: Mapping[str, Sequence[int]], key: str, path: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{path}: no tensor {key!r}, so the DiT's size cannot be read from it")
    return tuple(shapes[key])


def detect(shapes: Mapping[str, Sequence[int]], path: str = "<state dict>") -> DiTConfig:
    """Read a :class:`DiTConfig` from official-layout key names and their shapes.

    ``shapes`` maps each key (official names, no prefix) to its shape; the tensors themselves are
    not needed, so a safetensors header or a ``meta`` state dict is enough.
    """
    dim = _shape(shapes, "head.modulation", path)[-1]
    ffn_dim = _shape(shapes, "blocks.0.ffn.0.weight", path)[0]
    layers = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))}
    in_dim = _shape(shapes, "patch_embedding.weight", path)[1]
    text_dim = _shape(shapes, "text_embedding.0.weight", path)[1]
    patch = tuple(_shape(shapes, "patch_embedding.weight", path)[2:])
    out_dim = _shape(shapes, "head.head.weight", path)[0] // (patch[0] * patch[1] * patch[2])
    freq_dim = _shape(shapes, "time_embedding.0.weight", path)[1]
    if "img_emb.emb_pos" in shapes:
        model_type = "flf2v"
    elif "img_emb.proj.0.bias" in shapes or in_dim == 2 * LATENT_CHANNELS + 4:  # Wan2.2 i2v: y without CLIP
        model_type = "i2v"
    elif in_dim == WAN22_LATENT_CHANNELS:  # Wan2.2 TI2V-5B: the image is the latent's first frame
        model_type = "ti2v"
    else:
        model_type = "t2v"
    if layers != set(range(len(layers))):
        missing = sorted(set(range(max(layers) + 1)) - layers)
        raise CheckpointError(f"{path}: transformer blocks {missing} are missing (found {len(layers)} blocks)")
    if dim % HEAD_DIM:
        raise CheckpointError(f"{path}: width {dim} is not a multiple of {HEAD_DIM}; not a Wan2.1 DiT")
    if dim in KNOWN_DEPTHS and len(layers) != KNOWN_DEPTHS[dim]:
        raise CheckpointError(f"{path}: a Wan DiT of width {dim} has {KNOWN_DEPTHS[dim]} transformer blocks, "
                              f"this file has {len(layers)}; it is incomplete or "
                              "altered, fetch the file again")
    clip_dim = _shape(shapes, "img_emb.proj.0.weight", path)[0] if "img_emb.proj.0.weight" in shapes else (
        0 if model_type == "i2v" else CLIP_DIM)
    vace = _vace(shapes, len(layers), path) if "vace_patch_embedding.weight" in shapes else {}
    return DiTConfig(model_type="vace" if vace else model_type, dim=dim, ffn_dim=ffn_dim, num_layers=len(layers),
                     in_dim=in_dim, out_dim=out_dim, text_dim=text_dim, freq_dim=freq_dim,
                     patch_size=patch, clip_dim=clip_dim, **vace)


def _vace(shapes: Mapping[str, Sequence[int]], num_layers: int, path: str) -> dict:
    """A VACE DiT's extra config: its context channels and the layers its N hints go to, every
    ``num_layers // N``-th block from 0 (the released 1.3B: 15 hints, every 2nd of 30; 14B: 8, every 5th of 40)."""
    count = len({int(m.group(1)) for k in shapes if (m := _VACE_BLOCK.match(k))})
    if count == 0 or num_layers // count == 0:
        raise CheckpointError(f"{path}: a VACE patch embedding but {count} VACE blocks for {num_layers} blocks; "
                              "the file is incomplete or altered")
    step = num_layers // count
    return {"vace_layers": tuple(range(0, step * count, step)),
            "vace_in_dim": _shape(shapes, "vace_patch_embedding.weight", path)[1]}
