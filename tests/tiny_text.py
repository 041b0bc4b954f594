"""A tiny SentencePiece model trained in the test session, and tiny UMT5 encoders around it."""

from __future__ import annotations

import io

import sentencepiece as spm

CORPUS = [
    "a cat walks on the beach at sunset, cinematic lighting, golden hour",
    "一只猫在日落时分的海滩上散步，电影感的灯光",
    "猫が夕暮れの浜辺を歩いている",
    "a dog 🐶 runs through a field of flowers 🌸🌼 in spring",
    "close-up portrait of an old man, highly detailed, 8k, sharp focus",
    "색조가 밝은, 과다 노출, 정적인, 흐릿한 디테일",
    "the quick brown fox jumps over the lazy dog",
    "vivid colors, overexposed, static, blurry details, subtitles, style, artwork",
] * 20

PROMPTS = [
    "A cat walks on the beach at sunset.",
    "一只猫在日落时分的海滩上散步",
    "a dog 🐶 in flowers 🌸",
    "  spaces   and\ttabs\nand &amp; entities  ",
    "",
    " ".join(["cinematic golden hour portrait"] * 200),  # far more than 512 tokens
]


def train_sentencepiece() -> bytes:
    """A unigram model with T5's special ids: pad 0, eos 1, unk 2, no bos."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=500, hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, byte_fallback=False,
        minloglevel=2)
    return model.getvalue()
