"""Writing videos on PyAV: frames are converted and encoded one at a time, to a temporary name that
is renamed when complete. No ffmpeg binary and no hand-written codecs: PyAV (FFmpeg's libraries) encodes."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import OutputError, RenderInterrupted
from ..files import (
    check_file_name,
    check_writable_folder,
    output_failed,
    place_new,
    remove_stale_partials,
    temporary_path,
)
from .formats import FORMAT_SPECS, FormatSpec, VideoFormat, check_fps, video_format
from .frames import as_uint8, check_frames, pad_even
from .metadata import with_text_chunks

log = logging.getLogger(__name__)


def write_video(frames, path: str | os.PathLike, fps: float | Fraction = 16, fmt: str | VideoFormat = "mp4",
                quality: int | None = None, metadata: dict[str, str] | None = None,
                interrupt: Callable[[], bool] | None = None,
                progress: Callable[[int, int], None] | None = None) -> Path:
    """Encode ``frames`` (``[F, H, W, 3]`` uint8 or float 0..1, tensor or array) to ``path``.

    Frames are converted and encoded one at a time. ``quality`` is the CRF for mp4 / mp4-h265 /
    webm (lower is better; defaults 19 / 24 / 30) and is ignored by gif, mov (ProRes 422 standard)
    and png. Odd sizes: H.264, H.265 (4:2:0) and ProRes (4:2:2) need even sides, so the last row
    and/or column is repeated (the file is one pixel larger); VP9, gif and png keep the size.
    GIF stores frame delays in 1/100 s, so its rate becomes 100 / round(100 / fps) (16 -> 16.67).
    ``metadata`` (e.g. ``prompt`` / ``workflow`` JSON) goes into the container tags
    (mp4 / mov / webm) or PNG text chunks of the first image; gif cannot hold it.
    The file is written under a temporary name in the same folder and renamed when complete; on
    any error or interrupt the temporary file is removed (``interrupt()`` is asked between frames),
    and temporary files that killed writers left in the folder are removed first. An existing file
    is never replaced: the name gets a ``-N`` suffix instead. ``progress(frames_done, count)`` is told as each
    frame goes to the encoder. Returns the path written (a folder for png).
    """
    fmt = video_format(fmt)
    spec = FORMAT_SPECS[fmt]
    count, height, width = check_frames(frames)
    rate = check_fps(fps, fmt)
    final = Path(path)
    if spec.extension and final.suffix.lower() != spec.extension:
        final = final.with_name(final.name + spec.extension)
    check_file_name(final)
    check_writable_folder(final.parent)
    for stale in remove_stale_partials(final.parent):
        log.info("removed %s, left by a writer that was killed", stale)
    temp = temporary_path(final)
    frames = _interruptible(frames, interrupt, count, progress)
    try:
        if fmt is VideoFormat.PNG:
            _write_png_sequence(frames, temp, {**(metadata or {}), "fps": str(rate)})
        else:
            _write_container(frames, temp, spec, rate, quality, metadata or {}, (width, height))
        written = place_new(temp, final)
    except BaseException as err:
        shutil.rmtree(temp, ignore_errors=True) if temp.is_dir() else temp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise output_failed(final, err) from err
        raise
    log.info("wrote %d frames (%dx%d, %s fps) to %s", count, width, height, rate, written)
    return written


def _interruptible(frames, interrupt: Callable[[], bool] | None, count: int,
                   progress: Callable[[int, int], None] | None = None):
    """``frames``, asking ``interrupt()`` before each one and telling ``progress`` after each was taken."""
    if interrupt is None and progress is None:
        return frames

    def checked():
        for i, frame in enumerate(frames):
            if interrupt is not None and interrupt():
                raise RenderInterrupted(f"video writing interrupted at frame {i + 1} of {count}; nothing was kept")
            yield frame
            if progress is not None:
                progress(i + 1, count)

    return checked()


def _write_container(frames, path: Path, spec: FormatSpec, rate: Fraction, quality, metadata, size) -> None:
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
        array = as_uint8(frame)
        yield pad_even(array) if even else array


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
            data = with_text_chunks(data, metadata)
        (folder / f"frame_{i:05d}.png").write_bytes(data)


def _encode_png(frame: np.ndarray) -> bytes:
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)
