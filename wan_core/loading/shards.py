"""Sharded safetensors checkpoints: one model in ``<stem>-0000N-of-0000M.safetensors`` files.

The official Wan2.1 14B and Wan2.2 A14B releases ship each DiT this way, usually with a
``<stem>.safetensors.index.json`` whose ``weight_map`` names the shard of every tensor. A sharded checkpoint
is given by any of its shards, its index file, or the folder holding it; every shard is memory-mapped and
the tensors are merged into one state dict (no copy). Missing shards, a tensor in two shards, or an index
that disagrees with the shards are :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import CheckpointError

SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")
INDEX_SUFFIX = ".safetensors.index.json"


def is_later_shard(name: str) -> bool:
    """True for shard 2, 3, ... of a sharded checkpoint (lists show only the first, which loads them all)."""
    match = SHARD.match(Path(name).name)
    return match is not None and int(match["index"]) > 1


def shard_files(path: Path) -> list[Path] | None:
    """The shards of the sharded checkpoint ``path`` names (a shard, an index file or a folder), in order, or
    None when ``path`` is a single file. Raises :class:`CheckpointError` for an incomplete set."""
    if path.is_dir():
        return _in_folder(path)
    if path.name.endswith(INDEX_SUFFIX):
        return _from_index(path)
    match = SHARD.match(path.name)
    if match is None:
        return None
    index = path.with_name(match["stem"] + INDEX_SUFFIX)
    if index.is_file():
        return _from_index(index)
    return _numbered(path.parent, match["stem"], int(match["count"]))


def _in_folder(folder: Path) -> list[Path]:
    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    stems = sorted({m["stem"] for p in folder.glob("*.safetensors") if (m := SHARD.match(p.name))})
    if len(indexes) == 1:
        return _from_index(indexes[0])
    singles = [p for p in folder.glob("*.safetensors") if not SHARD.match(p.name)]
    if len(indexes) > 1 or len(stems) > 1 or (stems and singles) or (not stems and len(singles) != 1):
        names = ", ".join(sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".json"))) or "none"
        raise CheckpointError(f"{folder} is a folder, but not of one checkpoint (found: {names}); give the file "
                              "itself, or a folder holding one model's shards")
    if not stems:
        return singles
    count = {int(m["count"]) for p in folder.glob(stems[0] + "-*.safetensors") if (m := SHARD.match(p.name))}
    return _numbered(folder, stems[0], max(count))


def _numbered(folder: Path, stem: str, count: int) -> list[Path]:
    files = [folder / f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise CheckpointError(f"{folder}: the sharded checkpoint {stem} has {count} shards but "
                              f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing; download "
                              "every shard into the same folder")
    return files


def _from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index} is not a readable shard index (a weight_map of tensor -> shard file): "
                              f"{err}; download it again") from err
    files = [index.parent / name for name in names]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise CheckpointError(f"{index} names {len(files)} shards but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} missing; download every shard into "
                              f"{index.parent}")
    return files


def open_shards(path: Path, load) -> dict | None:
    """The state dict of the sharded checkpoint ``path`` names (the shards' ``load(file)`` merged), or None when
    ``path`` is one plain file. A tensor in two shards, or an index naming tensors its shard lacks, is a
    :class:`CheckpointError`."""
    files = shard_files(path)
    if files is None or (len(files) == 1 and not SHARD.match(files[0].name)):
        return None if files is None else load(files[0])
    merged: dict = {}
    for file in files:
        part = load(file)
        twice = sorted(set(part) & set(merged))
        if twice:
            raise CheckpointError(f"{file}: tensors {', '.join(twice[:4])} are also in another shard of this "
                                  "checkpoint; the shards are of different models, download them again")
        merged.update(part)
    index = _index_of(path, files[0])
    if index is not None:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        absent = sorted(k for k, name in weight_map.items() if k not in merged)
        if absent:
            raise CheckpointError(f"{index} lists {len(absent)} tensors the shards do not hold ({', '.join(absent[:4])}"
                                  f"{', ...' if len(absent) > 4 else ''}); the shards and the index are of different "
                                  "downloads, fetch them again")
    return merged


def _index_of(path: Path, first: Path) -> Path | None:
    if path.name.endswith(INDEX_SUFFIX):
        return path
    match = SHARD.match(first.name)
    index = first.with_name(match["stem"] + INDEX_SUFFIX) if match else None
    if index is not None and index.is_file():
        return index
    indexes = sorted(first.parent.glob("*" + INDEX_SUFFIX)) if path.is_dir() else []
    return indexes[0] if len(indexes) == 1 else None
