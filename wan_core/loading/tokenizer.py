"""The UMT5 tokenizer: SentencePiece from wherever the user has it, with the official text cleaning.

Sources, in order: the ``spiece_model`` uint8 tensor inside the checkpoint (ComfyUI's files), an
explicit tokenizer path, then ``spiece.model`` / ``tokenizer.json`` next to the checkpoint (also in
a ``google/umt5-xxl`` folder beside it, as in the official model folders).
"""

from __future__ import annotations

import html
import logging
import os
import re
from pathlib import Path

import torch

from ..constants import TEXT_LEN
from ..errors import CheckpointError, InputError

log = logging.getLogger(__name__)

EMBEDDED_KEY = "spiece_model"
PAD_ID, EOS_ID = 0, 1
_NAMES = ("spiece.model", "tokenizer.model", "tokenizer.json")


def clean_text(text: str) -> str:
    """The official prompt cleaning: HTML entities unescaped (twice), whitespace runs collapsed.

    (The official code also runs ``ftfy.fix_text`` to repair mis-decoded Unicode; that package is
    not a dependency here, and prompts typed into ComfyUI are already valid Unicode.)
    """
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _check_encodable(row: int, text: str) -> None:
    """Raise :class:`InputError` naming the first character that is not valid Unicode text (a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(f"prompt {row} has a character that is not valid text at position {err.start} "
                         f"({text[err.start]!r}, a lone UTF-16 surrogate from a bad copy-paste); delete it and "
                         "retype that part") from None


class Tokenizer:
    """Text -> ids: SentencePiece pieces plus the end token, truncated to ``max_length``."""

    def __init__(self, encode_fn, source: str, max_length: int = TEXT_LEN):
        self._encode = encode_fn
        self.source = source
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, max_length] long, mask [B, max_length] long)``; pads with id 0."""
        ids = torch.full((len(texts), self.max_length), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            _check_encodable(row, text)
            pieces = self._encode(clean_text(text))
            if len(pieces) + 1 > self.max_length:
                log.warning("prompt %d has %d tokens; only the first %d are used: %r...", row, len(pieces) + 1,
                            self.max_length, text[:60])
                pieces = pieces[: self.max_length - 1]
            tokens = [*pieces, EOS_ID]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask


def _from_sentencepiece(proto: bytes, source: str) -> Tokenizer:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError) as err:
        raise CheckpointError(f"the tokenizer in {source} is not a SentencePiece model ({err})") from err
    return Tokenizer(lambda text: processor.encode(text, out_type=int), source)


def _from_tokenizer_json(path: Path) -> Tokenizer:
    try:
        from tokenizers import Tokenizer as FastTokenizer
    except ImportError as err:
        raise CheckpointError(f"{path} needs the 'tokenizers' package (pip install tokenizers), or use the "
                              "spiece.model of the same folder") from err
    fast = FastTokenizer.from_file(str(path))
    fast.no_padding()
    fast.no_truncation()

    return Tokenizer(lambda text: fast.encode(text, add_special_tokens=False).ids, str(path))


def _from_file(path: Path) -> Tokenizer:
    if path.suffix == ".json":
        return _from_tokenizer_json(path)
    return _from_sentencepiece(path.read_bytes(), str(path))


def find_tokenizer(checkpoint: str | os.PathLike, state: dict | None, explicit: str | os.PathLike | None) -> Tokenizer:
    """The tokenizer for ``checkpoint`` from the first source that has one (see the module docstring)."""
    if state is not None and EMBEDDED_KEY in state:
        return _from_sentencepiece(bytes(state[EMBEDDED_KEY].cpu().numpy().tobytes()), f"{checkpoint} (embedded)")
    looked = [f"a '{EMBEDDED_KEY}' tensor inside {checkpoint}"]
    if explicit is not None:
        path = Path(explicit)
        candidates = [path / n for n in _NAMES] if path.is_dir() else [path]
        for candidate in candidates:
            if candidate.is_file():
                return _from_file(candidate)
        looked.append(str(path))
    folder = Path(checkpoint).parent
    for base in (folder, folder / "google" / "umt5-xxl"):
        for name in _NAMES:
            if (base / name).is_file():
                return _from_file(base / name)
            looked.append(str(base / name))
    raise CheckpointError("no UMT5 tokenizer found; looked for " + "; ".join(looked) + ". Fix: use ComfyUI's "
                          "umt5_xxl_*.safetensors (the tokenizer is inside), or put spiece.model from "
                          "google/umt5-xxl next to the checkpoint, or pass its path as the tokenizer")
