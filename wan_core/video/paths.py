"""Output names that never leave the output folder or replace a file, atomic placement of finished
files, and opening files for reading with clear errors."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import av

from ..errors import InputError


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


def place_new(temp: Path, final: Path) -> Path:
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


def temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.partial{final.suffix}")


def png_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.png"))
    if not files:
        raise InputError(f"{folder} holds no .png frames")
    return files


def open_for_reading(path: Path):
    if not path.exists():
        raise InputError(f"video file {path} does not exist")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not a readable video ({err}); re-export it as mp4 or webm") from err
