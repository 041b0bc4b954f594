"""Reading videos (any container FFmpeg reads, or a PNG sequence folder) as uint8 frames."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..errors import InputError
from .frames import Clip
from .metadata import read_metadata
from .paths import open_for_reading, png_files


def read_video(path: str | os.PathLike, start: int = 0, max_frames: int | None = None, stride: int = 1,
               size: tuple[int, int] | None = None) -> Clip:
    """Frames ``start, start + stride, ...`` (at most ``max_frames``) as uint8 ``[F, H, W, 3]``.

    Decoding stops as soon as enough frames are read, and only the frames returned are converted
    to RGB and kept. ``size`` is ``(width, height)`` to resize to. ``fps`` is the source rate
    divided by ``stride``. A PNG sequence folder reads at 16 fps unless ``fps`` metadata says so.
    """
    _check_read_args(start, max_frames, stride, size)
    path = Path(path)
    frames = list(_png_frames(path, start, max_frames, stride, size) if path.is_dir()
                  else _container_frames(path, start, max_frames, stride, size))
    if not frames:
        raise InputError(f"{path} has no frames from frame {start} on (stride {stride})")
    fps = _source_fps(path) / stride
    return Clip(torch.from_numpy(np.stack(frames)), fps, read_metadata(path))


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file (png, jpg, webp, ... or a video's first frame) as ComfyUI IMAGE ``[1, H, W, 3]`` in 0..1."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {path} does not exist; check the path")
    try:
        return read_video(path, max_frames=1).images()
    except InputError as err:
        raise InputError(f"{path} is not a readable image; use a png, jpg or webp file ({err})") from err


def _check_read_args(start, max_frames, stride, size) -> None:
    if start < 0 or stride < 1 or (max_frames is not None and max_frames < 1):
        raise InputError(f"need start >= 0, stride >= 1 and max_frames >= 1 (or None); "
                         f"got start {start}, stride {stride}, max_frames {max_frames}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise InputError(f"size must be (width, height) in pixels, got {size!r}")


def _wanted(index: int, start: int, stride: int) -> bool:
    return index >= start and (index - start) % stride == 0


def _container_frames(path: Path, start, max_frames, stride, size) -> Iterable[np.ndarray]:
    with open_for_reading(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = stream.frames  # 0 when the container does not say
        taken = decoded = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if not _wanted(index, start, stride):
                    continue
                if size is not None:
                    frame = frame.reformat(width=size[0], height=size[1])
                yield frame.to_ndarray(format="rgb24")
                taken += 1
                if max_frames is not None and taken >= max_frames:
                    return
        except av.error.FFmpegError as err:
            raise InputError(f"{path} could not be decoded after frame {decoded} ({err}); the file is damaged, "
                             "re-export it") from err
        if declared and decoded < declared:
            raise InputError(f"{path} declares {declared} frames but only {decoded} could be decoded: the file is "
                             "truncated or damaged; re-export it")


def _png_frames(folder: Path, start, max_frames, stride, size) -> Iterable[np.ndarray]:
    files = [f for i, f in enumerate(png_files(folder)) if _wanted(i, start, stride)]
    for file in files[:max_frames]:
        with open_for_reading(file) as container:
            frame = next(container.decode(video=0))
            if size is not None:
                frame = frame.reformat(width=size[0], height=size[1])
            yield frame.to_ndarray(format="rgb24")


def _source_fps(path: Path) -> Fraction:
    if path.is_dir():
        return Fraction(read_metadata(path).get("fps", "16"))
    with open_for_reading(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return Fraction(rate) if rate else Fraction(16)
