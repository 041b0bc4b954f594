"""Workflow metadata in video files: container tags (mp4 / mov / webm) and PNG text chunks."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from .paths import open_for_reading, png_files

METADATA_KEYS = ("prompt", "workflow")
"""Keys ComfyUI's frontend reads back from a file dragged onto the canvas (JSON strings)."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _text_chunk(key: str, value: str) -> bytes:
    """``tEXt`` (Latin-1, what ComfyUI's SaveImage writes) or, for other text, UTF-8 ``iTXt``."""
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # keyword, compression flag and method, empty language and translation
        return _png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def with_text_chunks(png: bytes, metadata: dict[str, str]) -> bytes:
    """Insert one text chunk per entry right after the header chunk."""
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, length, type, 13 header bytes, CRC
    chunks = b"".join(_text_chunk(k, str(v)) for k, v in metadata.items())
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def png_text(data: bytes) -> dict[str, str]:
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


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Container tags (mp4 / mov / webm, keys lower-cased) or the first PNG's text chunks."""
    path = Path(path)
    first_png = png_files(path)[0] if path.is_dir() else path if path.suffix.lower() == ".png" else None
    if first_png is not None:
        return png_text(first_png.read_bytes())
    with open_for_reading(path) as container:
        return {k.lower(): v for k, v in container.metadata.items()}
