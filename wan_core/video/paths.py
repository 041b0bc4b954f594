"""Output names that never leave the output folder, and opening files for reading with clear errors
(safe writing itself is :mod:`wan_core.files`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import av

from ..errors import InputError
from ..files import check_file_name, check_writable_folder


def next_output_path(output_dir: str | os.PathLike, prefix: str, ext: str) -> Path:
    """``<output_dir>/<prefix>_NNNNN<ext>`` with the first counter not yet used.

    ``prefix`` may name subfolders inside ``output_dir`` (``wan/clip``); an absolute prefix or one
    with a ``..`` part is refused, so a prefix can never write outside the output folder.
    """
    root = Path(output_dir).resolve()
    if not isinstance(prefix, str) or "\0" in prefix:
        raise InputError(f"filename prefix {prefix!r} must be text without NUL characters; for example 'wan/clip'")
    parts = Path(prefix.replace("\\", "/")).parts
    if not prefix.strip() or Path(prefix).is_absolute() or prefix.startswith(("/", "\\")) or ".." in parts:
        raise InputError(f"filename prefix {prefix!r} must be a relative name inside the output folder "
                         "(no absolute path, no '..'); for example 'wan/clip'")
    target = (root / Path(*parts)).resolve()
    if root not in target.parents:
        raise InputError(f"filename prefix {prefix!r} leads outside the output folder {root}")
    check_writable_folder(target.parent)
    pattern = re.compile(rf"^{re.escape(target.name)}_(\d+){re.escape(ext)}$")
    used = [int(m.group(1)) for p in target.parent.iterdir() if (m := pattern.match(p.name))]
    final = target.parent / f"{target.name}_{max(used, default=0) + 1:05d}{ext}"
    check_file_name(final)
    return final


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
