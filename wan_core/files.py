"""Files written safely: a hidden temporary name tied to its writer, atomic placement that never replaces
a file, and removal of what killed writers left behind. Used for videos, latents and resume checkpoints."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from .errors import InputError, OutputError


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


_PARTIAL = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.partial(\.[A-Za-z0-9]+)?$")
"""Temporary names: ``.<stem>.<writer pid>-<random>.partial<suffix>`` (hidden, and tied to their writer)."""

NAME_MARGIN = 8
"""Bytes kept free in a name for the ``-N`` suffix a clash adds."""


def temporary_path(final: Path) -> Path:
    """A hidden name beside ``final`` that carries this process's id, so a dead writer's leftovers are known."""
    return final.with_name(f".{final.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{final.suffix}")


def check_file_name(final: Path) -> None:
    """Raise :class:`InputError` if ``final`` (or its temporary twin) has NUL bytes or is too long a name."""
    if "\0" in str(final):
        raise InputError(f"output name {str(final)!r} contains a NUL character; use a plain name")
    try:
        limit = os.pathconf(final.parent, "PC_NAME_MAX") if final.parent.exists() else 255
    except (OSError, ValueError):
        limit = 255
    longest = max(len(final.name.encode()) + NAME_MARGIN, len(temporary_path(final).name.encode()))
    if longest > limit:
        raise InputError(f"output name {final.name!r} is too long for this file system ({longest} of at most "
                         f"{limit} bytes with the temporary name); use a shorter filename prefix")


def check_writable_folder(folder: Path, what: str = "output folder") -> None:
    """Make ``folder`` if needed and prove it takes a file (one is written and removed under a temporary name);
    :class:`OutputError` naming the folder when it cannot."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_path(folder / "write-check")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"the {what} {folder} cannot be written ({err.strerror or err}); choose another folder, "
                          "or give this one write permission and free space") from None


def output_failed(final: Path, err: Exception) -> OutputError:
    """The error for ``final`` that could not be written because of ``err`` (a full disk, a lost folder)."""
    reason = getattr(err, "strerror", None) or err
    return OutputError(f"{final} could not be written ({reason}); nothing was kept: free disk space "
                       "or choose another folder, then run again")


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete temporary files and folders in ``folder`` left by writers that no longer run; returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _PARTIAL.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid at all): leave its file alone
    return True
