"""Text encoder benchmark: load + encode one ~120-token prompt, ours vs transformers' UMT5EncoderModel.

Real UMT5-XXL layer sizes with random bf16 weights in a safetensors file (HF names, tokenizer
embedded, as ComfyUI's files). The full model is 24 layers / 11 GB; on a 24 GB machine the
reference cannot hold it in fp32, so ``--layers`` (default 6) keeps the real width and cuts depth.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_core.models.text_encoder import UMT5_XXL, UMT5Encoder

from .common import PeakSampler, gib, peak_rss_bytes, run_worker

PROMPT = ("A red fox trots through fresh snow in a birch forest at dawn, soft golden light falls between the "
          "trunks, its breath visible in the cold air, tracks stretching behind it; the camera follows at a "
          "low angle, shallow depth of field, fine detail in the fur, cinematic colour grading, gentle film "
          "grain, calm and quiet mood, 4k, highly detailed, natural motion, wide shot turning into close-up")


def write_model(folder: Path, layers: int) -> Path:
    from dataclasses import replace

    from wan_core.demo import _tokenizer_model

    cfg = replace(UMT5_XXL, num_layers=layers)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UMT5Encoder(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    state["spiece_model"] = torch.frombuffer(bytearray(_tokenizer_model()), dtype=torch.uint8)
    path = folder / "model.safetensors"
    save_file(state, path)
    (folder / "spiece.model").write_bytes(_tokenizer_model())
    config = {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "vocab_size": cfg.vocab,
              "d_model": cfg.dim, "d_kv": cfg.dim_attn // cfg.num_heads, "d_ff": cfg.dim_ffn, "num_layers": layers,
              "num_heads": cfg.num_heads, "relative_attention_num_buckets": 32,
              "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0,
              "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config))
    return path


def worker(impl: str, folder: str) -> dict:
    torch.set_grad_enabled(False)
    path = Path(folder) / "model.safetensors"
    with PeakSampler() as load_peak:
        start = time.perf_counter()
        if impl == "wan_core":
            from wan_core import load_text_encoder

            encoder = load_text_encoder(path)
            encode = lambda: encoder.encode([PROMPT])  # noqa: E731
            tokens = int(encoder.tokenizer([PROMPT])[1].sum())
        else:
            from transformers import UMT5EncoderModel

            from wan_core.loading.tokenizer import find_tokenizer

            model = UMT5EncoderModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
            ids, mask = find_tokenizer(path, None, Path(folder) / "spiece.model")([PROMPT])  # padded to 512
            encode = lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state  # noqa: E731
            tokens = int(mask.sum())
        load_seconds = time.perf_counter() - start
    with PeakSampler() as encode_peak:
        start = time.perf_counter()
        out = encode()
        encode_seconds = time.perf_counter() - start
    return {"impl": impl, "load": load_seconds, "encode": encode_seconds, "tokens": tokens,
            "load_peak": load_peak.peak, "encode_peak": encode_peak.peak, "peak_rss": peak_rss_bytes(),
            "checksum": float(out[0, :tokens].double().abs().mean())}


def main(layers: int = 6) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_model(Path(tmp), layers)
        os.sync()
        size = path.stat().st_size
        print(f"UMT5 encoder, real XXL widths, {layers} of 24 layers, random bf16 weights: file {gib(size)}; "
              f"CPU, {torch.get_num_threads()} threads, fp32 compute")
        results = {impl: run_worker("benchmarks.text", impl, tmp) for impl in ("wan_core", "transformers")}
    ref = results["transformers"]
    for impl, r in results.items():
        print(f"  {impl:12s} load {r['load']:6.2f} s  encode {r['encode']:6.2f} s ({r['encode'] / ref['encode']:4.2f}x "
              f"transformers)  peak RSS {gib(r['peak_rss'])} = {r['peak_rss'] / size:4.2f}x the file  "
              f"({r['tokens']} tokens, |out| {r['checksum']:.5f})")


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1], sys.argv[2])))
