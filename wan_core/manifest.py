"""The run manifest: what a render was made from, stored in every video, latent and resume file we write.

Model and image files by name, size and a fast hash (so they can be found again by either), the
prompts, sampler settings, size, attention backend, dtypes and package versions. ``python -m
wan_core replay VIDEO`` renders again from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata as package_metadata
from pathlib import Path

import torch

from .errors import InputError

MANIFEST_KEY = "wancore_manifest"
"""The container tag / PNG text key / safetensors metadata key that holds the manifest (JSON)."""

HASH_SPAN = 1 << 20
"""Bytes hashed from the start and from the end of a file: fast for 28 GB checkpoints, and any file that
differs in size, header or tail differs in hash."""


def fast_file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's size, first MiB and last MiB (hex, 32 characters)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(HASH_SPAN))
        if size > HASH_SPAN:
            f.seek(max(HASH_SPAN, size - HASH_SPAN))
            h.update(f.read(HASH_SPAN))
    return h.hexdigest()[:32]


def file_ref(path: str | os.PathLike) -> dict:
    """``{"name", "path", "size", "hash"}`` of a file, for a manifest."""
    path = Path(path)
    return {"name": path.name, "path": str(path.absolute()), "size": path.stat().st_size,
            "hash": fast_file_hash(path)}


def versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    try:
        out["comfyui-wancore"] = package_metadata.version("comfyui-wancore")
    except package_metadata.PackageNotFoundError:
        out["comfyui-wancore"] = "source checkout"
    return out


def dumps(manifest: dict) -> str:
    return json.dumps(manifest, sort_keys=True, default=str)


def read_manifest(video: str | os.PathLike) -> dict:
    """The manifest stored in a video we wrote; :class:`InputError` if it has none."""
    from .video import read_metadata

    text = read_metadata(video).get(MANIFEST_KEY)
    if not text:
        raise InputError(f"{video} carries no WanCore run manifest (it was not written by python -m wan_core, or "
                         "its metadata was stripped); nothing to replay")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{video}: its run manifest is damaged ({err})") from err


def find_file(ref: dict, folder: Path) -> Path:
    """The file a manifest names: at its recorded path, by name in ``folder``, or by size and hash in ``folder``."""
    candidates = [Path(ref["path"]), folder / ref["name"]]
    if folder.is_dir():
        candidates += sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_size == ref["size"])
    for candidate in candidates:
        if candidate.is_file() and candidate.stat().st_size == ref["size"] and fast_file_hash(candidate) == ref["hash"]:
            return candidate
    raise InputError(f"the file {ref['name']} ({ref['size']} bytes, hash {ref['hash']}) used by this render was not "
                     f"found at {ref['path']} nor in {folder} (by name or by hash); put it there or pass --models")
