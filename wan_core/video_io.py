"""Video files on PyAV: streaming writer and reader, workflow metadata, safe output paths.

No ffmpeg binary and no hand-written codecs: PyAV (FFmpeg's libraries) encodes and decodes.
Frames are ``[F, H, W, 3]`` RGB, uint8 or float in 0..1 (ComfyUI's IMAGE layout).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from .errors import InputError

log = logging.getLogger(__name__)

METADATA_KEYS = ("prompt", "workflow")
"""Keys ComfyUI's frontend reads back from a file dragged onto the canvas (JSON strings)."""


class VideoFormat(str, Enum):
    MP4 = "mp4"  # H.264, yuv420p, CRF: plays everywhere
    MP4_H265 = "mp4-h265"  # H.265/HEVC, yuv420p, CRF: smaller files, less compatible
    WEBM = "webm"  # VP9, yuv420p, CRF: browsers
    GIF = "gif"  # 256-colour palette computed from the whole clip
    MOV = "mov"  # ProRes 422, yuv422p10le: for editors
    PNG = "png"  # lossless image sequence in a folder


@dataclass(frozen=True)
class _Spec:
    container: str | None  # PyAV container format (None: image sequence)
    codec: str
    pix_fmt: str
    extension: str
    even_size: bool  # chroma subsampling needs even width and height: pad by one pixel
    quality: int | None  # default CRF (lower is better); None: the codec has no CRF
    metadata: bool  # the container keeps our metadata tags
    options: tuple[tuple[str, str], ...] = ()  # fixed encoder options besides the CRF


_SPECS = {
    VideoFormat.MP4: _Spec("mp4", "libx264", "yuv420p", ".mp4", True, 19, True),
    VideoFormat.MP4_H265: _Spec("mp4", "libx265", "yuv420p", ".mp4", True, 24, True,
                                (("x265-params", "log-level=error"),)),
    VideoFormat.WEBM: _Spec("webm", "libvpx-vp9", "yuv420p", ".webm", False, 30, True, (("b", "0"), ("row-mt", "1"))),
    VideoFormat.GIF: _Spec("gif", "gif", "pal8", ".gif", False, None, False),
    VideoFormat.MOV: _Spec("mov", "prores_ks", "yuv422p10le", ".mov", True, None, True,
                           (("profile", "2"),)),  # ProRes 422 (standard)
    VideoFormat.PNG: _Spec(None, "png", "rgb24", "", False, None, True),
}


def video_format(fmt: str | VideoFormat) -> VideoFormat:
    try:
        return VideoFormat(fmt)
    except ValueError:
        raise InputError(f"video format {fmt!r} is unknown; choose one of "
                         f"{', '.join(f.value for f in VideoFormat)}") from None


def extension(fmt: str | VideoFormat) -> str:
    """File extension of a format ('' for a PNG sequence, which is a folder)."""
    return _SPECS[video_format(fmt)].extension


@dataclass
class Clip:
    """Decoded video: frames ``[F, H, W, 3]`` uint8, frame rate, and container metadata."""

    frames: torch.Tensor
    fps: Fraction
    metadata: dict[str, str] = field(default_factory=dict)

    def images(self) -> torch.Tensor:
        """The frames as ComfyUI IMAGE: ``[F, H, W, 3]`` float32 in 0..1."""
        return self.frames.float() / 255.0


# ---------------------------------------------------------------- frames and layouts

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


def _as_uint8(frame) -> np.ndarray:
    """One frame ``[H, W, 3]`` (uint8, or float 0..1) as a contiguous uint8 array."""
    if isinstance(frame, torch.Tensor):
        if frame.is_floating_point():
            frame = (frame.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        return np.ascontiguousarray(frame.cpu().numpy())
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = (np.clip(frame.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(frame)


def _check_frames(frames) -> tuple[int, int, int]:
    shape = tuple(frames.shape)
    if len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise InputError(f"frames must be [frames, height, width, 3] RGB, got shape {shape}")
    if shape[1] < 2 or shape[2] < 2:
        raise InputError(f"frames of {shape[2]}x{shape[1]} pixels are too small to encode")
    return shape[0], shape[1], shape[2]


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row / column so both sides are even (4:2:0 and 4:2:2 chroma need it)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


# ---------------------------------------------------------------- output paths

def next_output_path(output_dir: str | os.PathLike, prefix: str, ext: str) -> Path:
    """``<output_dir>/<prefix>_NNNNN<ext>`` with the first counter not yet used.

    ``prefix`` may name subfolders inside ``output_dir`` (``wan/clip``); an absolute prefix or one
    with a ``..`` part is refused, so a prefix can never write outside the output folder.
    """
    root = Path(output_dir).resolve()
    parts = Path(prefix.replace("\\", "/")).parts
    if not prefix.strip() or Path(prefix).is_absolute() or prefix.startswith(("/", "\\")) or ".." in parts:
        raise InputError(f"filename prefix {prefix!r} must be a relative name inside the output folder "
                         "(no absolute path, no '..'); for example 'wan/clip'")
    target = (root / Path(*parts)).resolve()
    if root not in target.parents:
        raise InputError(f"filename prefix {prefix!r} leads outside the output folder {root}")
    target.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(target.name)}_(\d+){re.escape(ext)}$")
    used = [int(m.group(1)) for p in target.parent.iterdir() if (m := pattern.match(p.name))]
    return target.parent / f"{target.name}_{max(used, default=0) + 1:05d}{ext}"


def _place(temp: Path, final: Path) -> Path:
    """Move a finished temporary file or folder to ``final`` without ever replacing an existing one;
    on a name clash the name gets a ``-N`` suffix. Returns where it went."""
    candidate, n = final, 1
    while True:
        try:
            if temp.is_dir():  # a PNG sequence: directories cannot be hard-linked
                if candidate.exists():
                    raise FileExistsError(candidate)
                os.rename(temp, candidate)
            else:
                os.link(temp, candidate)  # fails if candidate exists: no check-then-write race
                temp.unlink()
            return candidate
        except FileExistsError:
            candidate = final.with_name(f"{final.stem}-{n}{final.suffix}")
            n += 1


def _temporary(final: Path) -> Path:
    return final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.partial{final.suffix}")


# ---------------------------------------------------------------- writing

def write_video(frames, path: str | os.PathLike, fps: float | Fraction = 16, fmt: str | VideoFormat = "mp4",
                quality: int | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Encode ``frames`` (``[F, H, W, 3]`` uint8 or float 0..1, tensor or array) to ``path``.

    Frames are converted and encoded one at a time. ``quality`` is the CRF for mp4 / mp4-h265 /
    webm (lower is better; defaults 19 / 24 / 30) and is ignored by gif, mov (ProRes 422 standard)
    and png. Odd sizes: H.264, H.265 (4:2:0) and ProRes (4:2:2) need even sides, so the last row
    and/or column is repeated (the file is one pixel larger); VP9, gif and png keep the size.
    GIF stores frame delays in 1/100 s, so its rate becomes 100 / round(100 / fps) (16 -> 16.67).
    ``metadata`` (e.g. ``prompt`` / ``workflow`` JSON) goes into the container tags
    (mp4 / mov / webm) or PNG text chunks of the first image; gif cannot hold it.
    The file is written under a temporary name in the same folder and renamed when complete; on
    any error or interrupt the temporary file is removed. An existing file is never replaced:
    the name gets a ``-N`` suffix instead. Returns the path written (a folder for png).
    """
    fmt = video_format(fmt)
    spec = _SPECS[fmt]
    count, height, width = _check_frames(frames)
    rate = _rate(fps)
    final = Path(path)
    if spec.extension and final.suffix.lower() != spec.extension:
        final = final.with_name(final.name + spec.extension)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temporary(final)
    try:
        if fmt is VideoFormat.PNG:
            _write_png_sequence(frames, temp, {**(metadata or {}), "fps": str(rate)})
        else:
            _write_container(frames, temp, spec, rate, quality, metadata or {}, (width, height))
        written = _place(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True) if temp.is_dir() else temp.unlink(missing_ok=True)
        raise
    log.info("wrote %d frames (%dx%d, %s fps) to %s", count, width, height, rate, written)
    return written


def _rate(fps) -> Fraction:
    try:
        rate = Fraction(fps).limit_denominator(1001 * 1000)
    except (TypeError, ValueError):
        rate = Fraction(0)
    if rate <= 0:
        raise InputError(f"fps must be a positive number, got {fps!r}")
    return rate


def _write_container(frames, path: Path, spec: _Spec, rate: Fraction, quality, metadata, size) -> None:
    options = {"movflags": "use_metadata_tags"} if spec.container in ("mp4", "mov") else {}
    with av.open(str(path), mode="w", format=spec.container, options=options) as container:
        if spec.metadata:
            container.metadata.update({k: str(v) for k, v in metadata.items()})
        stream = container.add_stream(spec.codec, rate=rate)
        width, height = size
        if spec.even_size:
            width, height = width + width % 2, height + height % 2
        stream.width, stream.height, stream.pix_fmt = width, height, spec.pix_fmt
        if spec.codec != "gif":  # encode frames on every core, as the ffmpeg command line does
            stream.thread_type, stream.thread_count = "FRAME", 0
        crf = quality if quality is not None else spec.quality
        stream.options = {**dict(spec.options), **({"crf": str(int(crf))} if crf is not None else {})}
        encode = _gif_encoder(stream, rate) if spec.codec == "gif" else (lambda f: stream.encode(f))
        for frame in _frames(frames, spec.even_size):
            container.mux(encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(encode(None))


def _frames(frames, even: bool) -> Iterator[np.ndarray]:
    for frame in frames:
        array = _as_uint8(frame)
        yield _pad_even(array) if even else array


def _gif_encoder(stream, rate: Fraction):
    """Frames -> GIF packets through FFmpeg's palettegen / paletteuse: one palette for the clip.

    palettegen needs every frame before it emits the palette, so a GIF (unlike the other formats)
    is buffered inside the filter graph until the end.
    """
    graph = av.filter.Graph()
    source = graph.add_buffer(width=stream.width, height=stream.height, format="rgb24",
                              time_base=Fraction(1, 1) / rate)
    split = graph.add("split")
    palette = graph.add("palettegen", "stats_mode=full")
    use = graph.add("paletteuse", "dither=sierra2_4a")
    sink = graph.add("buffersink")
    source.link_to(split)
    split.link_to(palette, 0, 0)
    split.link_to(use, 1, 0)
    palette.link_to(use, 0, 1)
    use.link_to(sink)
    graph.configure()
    index = 0

    def encode(frame):
        nonlocal index
        if frame is not None:
            frame.pts, frame.time_base = index, Fraction(1, 1) / rate
            index += 1
            graph.push(frame)
            return []
        graph.push(None)
        packets = []
        while True:
            try:
                out = graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            packets += stream.encode(out)
        return packets + stream.encode(None)

    return encode


def _write_png_sequence(frames, folder: Path, metadata: dict[str, str]) -> None:
    folder.mkdir()
    for i, frame in enumerate(_frames(frames, even=False)):
        data = _encode_png(frame)
        if i == 0 and metadata:
            data = _with_text_chunks(data, metadata)
        (folder / f"frame_{i:05d}.png").write_bytes(data)


def _encode_png(frame: np.ndarray) -> bytes:
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _text_chunk(key: str, value: str) -> bytes:
    """``tEXt`` (Latin-1, what ComfyUI's SaveImage writes) or, for other text, UTF-8 ``iTXt``."""
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # keyword, compression flag and method, empty language and translation
        return _png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _with_text_chunks(png: bytes, metadata: dict[str, str]) -> bytes:
    """Insert one text chunk per entry right after the header chunk."""
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, length, type, 13 header bytes, CRC
    chunks = b"".join(_text_chunk(k, str(v)) for k, v in metadata.items())
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt`` / ``iTXt`` entries of a PNG file's bytes."""
    out, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            if rest[:1] == b"\0":  # uncompressed
                _, _, rest = rest[2:].partition(b"\0")
                _, _, text = rest.partition(b"\0")
                out[key.decode("latin-1")] = text.decode("utf-8")
        elif kind == b"IEND":
            break
        pos += 12 + length
    return out


# ---------------------------------------------------------------- reading

def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Container tags (mp4 / mov / webm, keys lower-cased) or the first PNG's text chunks."""
    path = Path(path)
    first_png = _png_files(path)[0] if path.is_dir() else path if path.suffix.lower() == ".png" else None
    if first_png is not None:
        return _png_text(first_png.read_bytes())
    with _open_for_reading(path) as container:
        return {k.lower(): v for k, v in container.metadata.items()}


def _png_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.png"))
    if not files:
        raise InputError(f"{folder} holds no .png frames")
    return files


def _open_for_reading(path: Path):
    if not path.exists():
        raise InputError(f"video file {path} does not exist")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not a readable video ({err}); re-export it as mp4 or webm") from err


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


def _check_read_args(start, max_frames, stride, size) -> None:
    if start < 0 or stride < 1 or (max_frames is not None and max_frames < 1):
        raise InputError(f"need start >= 0, stride >= 1 and max_frames >= 1 (or None); "
                         f"got start {start}, stride {stride}, max_frames {max_frames}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise InputError(f"size must be (width, height) in pixels, got {size!r}")


def _wanted(index: int, start: int, stride: int) -> bool:
    return index >= start and (index - start) % stride == 0


def _container_frames(path: Path, start, max_frames, stride, size) -> Iterable[np.ndarray]:
    with _open_for_reading(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        taken = 0
        for index, frame in enumerate(container.decode(stream)):
            if not _wanted(index, start, stride):
                continue
            if size is not None:
                frame = frame.reformat(width=size[0], height=size[1])
            yield frame.to_ndarray(format="rgb24")
            taken += 1
            if max_frames is not None and taken >= max_frames:
                return


def _png_frames(folder: Path, start, max_frames, stride, size) -> Iterable[np.ndarray]:
    files = [f for i, f in enumerate(_png_files(folder)) if _wanted(i, start, stride)]
    for file in files[:max_frames]:
        with _open_for_reading(file) as container:
            frame = next(container.decode(video=0))
            if size is not None:
                frame = frame.reformat(width=size[0], height=size[1])
            yield frame.to_ndarray(format="rgb24")


def _source_fps(path: Path) -> Fraction:
    if path.is_dir():
        return Fraction(read_metadata(path).get("fps", "16"))
    with _open_for_reading(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return Fraction(rate) if rate else Fraction(16)
