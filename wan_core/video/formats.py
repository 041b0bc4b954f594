"""The video formats we write: container, codec, pixel format and defaults of each, as data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

from ..errors import InputError


class VideoFormat(str, Enum):
    MP4 = "mp4"  # H.264, yuv420p, CRF: plays everywhere
    MP4_H265 = "mp4-h265"  # H.265/HEVC, yuv420p, CRF: smaller files, less compatible
    WEBM = "webm"  # VP9, yuv420p, CRF: browsers
    GIF = "gif"  # 256-colour palette computed from the whole clip
    MOV = "mov"  # ProRes 422, yuv422p10le: for editors
    PNG = "png"  # lossless image sequence in a folder


@dataclass(frozen=True)
class FormatSpec:
    container: str | None  # PyAV container format (None: image sequence)
    codec: str
    pix_fmt: str
    extension: str
    even_size: bool  # chroma subsampling needs even width and height: pad by one pixel
    quality: int | None  # default CRF (lower is better); None: the codec has no CRF
    metadata: bool  # the container keeps our metadata tags
    options: tuple[tuple[str, str], ...] = ()  # fixed encoder options besides the CRF


FORMAT_SPECS = {
    VideoFormat.MP4: FormatSpec("mp4", "libx264", "yuv420p", ".mp4", True, 19, True),
    VideoFormat.MP4_H265: FormatSpec("mp4", "libx265", "yuv420p", ".mp4", True, 24, True,
                                (("x265-params", "log-level=error"),)),
    VideoFormat.WEBM: FormatSpec("webm", "libvpx-vp9", "yuv420p", ".webm", False, 30, True,
                                 (("b", "0"), ("row-mt", "1"))),
    VideoFormat.GIF: FormatSpec("gif", "gif", "pal8", ".gif", False, None, False),
    VideoFormat.MOV: FormatSpec("mov", "prores_ks", "yuv422p10le", ".mov", True, None, True,
                           (("profile", "2"),)),  # ProRes 422 (standard)
    VideoFormat.PNG: FormatSpec(None, "png", "rgb24", "", False, None, True),
}


def video_format(fmt: str | VideoFormat) -> VideoFormat:
    try:
        return VideoFormat(fmt)
    except ValueError:
        raise InputError(f"video format {fmt!r} is unknown; choose one of "
                         f"{', '.join(f.value for f in VideoFormat)}") from None


GIF_MIN_DELAY = 2
"""GIF frame delays are whole centiseconds, and browsers play delays under 2 cs as 10 cs: at most 50 fps."""


def check_fps(fps, fmt: str | VideoFormat = VideoFormat.MP4) -> Fraction:
    """``fps`` as an exact rate if it is a finite positive number that ``fmt`` can store."""
    try:
        rate = Fraction(fps).limit_denominator(1001 * 1000) if math.isfinite(fps) else Fraction(0)
    except (TypeError, ValueError):
        rate = Fraction(0)
    if rate <= 0:
        raise InputError(f"fps must be a finite positive number, got {fps!r} (Wan2.1 renders at 16)")
    if video_format(fmt) is VideoFormat.GIF and (round(100 / rate) < GIF_MIN_DELAY or round(100 / rate) > 65535):
        raise InputError(f"a GIF cannot play {float(rate):g} fps: its frame delays are whole centiseconds and "
                         f"players show delays under {GIF_MIN_DELAY} cs as 10 cs; use at most "
                         f"{100 // GIF_MIN_DELAY} fps, or mp4 / webm")
    return rate


def extension(fmt: str | VideoFormat) -> str:
    """File extension of a format ('' for a PNG sequence, which is a folder)."""
    return FORMAT_SPECS[video_format(fmt)].extension
