"""Frame layouts: ComfyUI IMAGE ``[F, H, W, 3]`` in 0..1, the models' ``[B, 3, F, H, W]`` in [-1, 1],
uint8 frames for the encoders, and the decoded :class:`Clip`."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from ..errors import InputError


@dataclass
class Clip:
    """Decoded video: frames ``[F, H, W, 3]`` uint8, frame rate, and container metadata."""

    frames: torch.Tensor
    fps: Fraction
    metadata: dict[str, str] = field(default_factory=dict)

    def images(self) -> torch.Tensor:
        """The frames as ComfyUI IMAGE: ``[F, H, W, 3]`` float32 in 0..1."""
        return self.frames.float() / 255.0


def images_to_video(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[F, H, W, 3]`` in 0..1 -> model video ``[1, 3, F, H, W]`` in [-1, 1]."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise InputError(f"IMAGE must be [frames, height, width, 3], got shape {tuple(images.shape)}")
    return (images.float() * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0)


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """Model video ``[B, 3, F, H, W]`` in [-1, 1] -> ComfyUI IMAGE ``[B*F, H, W, 3]`` in 0..1."""
    if video.dim() != 5 or video.shape[1] != 3:
        raise InputError(f"video must be [B, 3, frames, height, width], got shape {tuple(video.shape)}")
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).flatten(0, 1)


def as_uint8(frame) -> np.ndarray:
    """One frame ``[H, W, 3]`` (uint8, or float 0..1) as a contiguous uint8 array."""
    if isinstance(frame, torch.Tensor):
        if frame.is_floating_point():
            frame = (frame.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        return np.ascontiguousarray(frame.cpu().numpy())
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = (np.clip(frame.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(frame)


def check_frames(frames) -> tuple[int, int, int]:
    shape = tuple(frames.shape)
    if len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise InputError(f"frames must be [frames, height, width, 3] RGB, got shape {shape}")
    if shape[1] < 2 or shape[2] < 2:
        raise InputError(f"frames of {shape[2]}x{shape[1]} pixels are too small to encode")
    return shape[0], shape[1], shape[2]


def pad_even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row / column so both sides are even (4:2:0 and 4:2:2 chroma need it)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
