"""A tiny random Wan2.1 model set, written once in the real file layouts, so the whole pipeline
(text encoder with its embedded tokenizer, DiT, VAE, video writer) runs anywhere in seconds.

The weights are random: a demo render is structured noise, not a picture. The files follow the
ComfyUI model-folder layout (``diffusion_models/``, ``text_encoders/``, ``vae/``).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from .constants import NEGATIVE_PROMPT
from .models.clip_vision import ClipVision, ClipVisionConfig
from .models.config import DiTConfig
from .models.dit import WanDiT
from .models.text_encoder import TextEncoderConfig, UMT5Encoder
from .models.vae import VAEConfig, WanVAE
from .models.vae22 import VAE22Config, WanVAE22

log = logging.getLogger(__name__)

DEMO_FILES = {
    "diffusion_models": "wancore_demo_t2v.safetensors",
    "text_encoders": "wancore_demo_umt5.safetensors",
    "vae": "wancore_demo_vae.safetensors",
}
DEMO_IMAGE_FILES = {  # key -> (model folder, file name)
    "i2v": ("diffusion_models", "wancore_demo_i2v.safetensors"),
    "flf2v": ("diffusion_models", "wancore_demo_flf2v.safetensors"),
    "clip_vision": ("clip_vision", "wancore_demo_clip_vision.safetensors"),
    "lora": ("loras", "wancore_demo_distill_lora.safetensors"),
    "vace": ("diffusion_models", "wancore_demo_vace.safetensors"),
    "t2v_high": ("diffusion_models", "wancore_demo_wan22_t2v_high_noise.safetensors"),
    "t2v_low": ("diffusion_models", "wancore_demo_wan22_t2v_low_noise.safetensors"),
    "i2v_high": ("diffusion_models", "wancore_demo_wan22_i2v_high_noise.safetensors"),
    "i2v_low": ("diffusion_models", "wancore_demo_wan22_i2v_low_noise.safetensors"),
    "ti2v": ("diffusion_models", "wancore_demo_wan22_ti2v.safetensors"),
    "vae22": ("vae", "wancore_demo_wan22_vae.safetensors"),
}
TEXT = TextEncoderConfig(vocab=1024, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2)
DIT = DiTConfig("t2v", dim=256, ffn_dim=512, num_layers=4, text_dim=TEXT.dim)  # 4 blocks: a budget can stream some
VAE = VAEConfig(base_dim=8)
CLIP = ClipVisionConfig(dim=160, num_heads=2, num_layers=2, mlp_dim=320)
I2V = DiTConfig("i2v", dim=256, ffn_dim=512, num_layers=4, text_dim=TEXT.dim, in_dim=36, clip_dim=CLIP.dim)
FLF2V = DiTConfig("flf2v", dim=256, ffn_dim=512, num_layers=4, text_dim=TEXT.dim, in_dim=36, clip_dim=CLIP.dim)
VACE = DiTConfig("vace", dim=256, ffn_dim=512, num_layers=2, text_dim=TEXT.dim, vace_layers=(0, 1))
I2V_A14B = DiTConfig("i2v", dim=256, ffn_dim=512, num_layers=4, text_dim=TEXT.dim, in_dim=36, clip_dim=0)
"""The Wan2.2 A14B experts at demo size: t2v ones are :data:`DIT`; i2v ones take the image through y only."""
TI2V = DiTConfig("ti2v", dim=256, ffn_dim=512, num_layers=4, text_dim=TEXT.dim, in_dim=48, out_dim=48)
VAE22 = VAE22Config(base_dim=8, decoder_dim=12)
"""The Wan2.2 TI2V-5B model and its VAE (48 latent channels) at demo size."""
DEMO_SIZE = {"width": 256, "height": 160, "frames": 17, "steps": 8}
"""Render settings that keep a demo to seconds on a CPU."""

_CORPUS = (
    "a cat walks on the beach at sunset, cinematic lighting, golden hour, close-up portrait, "
    "a red fox runs through snow, aerial view of a city at night, slow motion, highly detailed",
    NEGATIVE_PROMPT,
)


def _tokenizer_model() -> bytes:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(_CORPUS) * 50), model_writer=out, vocab_size=400, hard_vocab_limit=False,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
    return out.getvalue()


def _random(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        fan_in = value[0].numel() if value.dim() > 1 else 1
        norm = key.endswith(("gamma", "norm.weight", "layer_norm.weight")) or ".norm" in key
        state[key] = (1 + 0.1 * noise) if norm else noise / fan_in ** 0.5
    return state


def _demo_lora(cfg: DiTConfig, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random LoRA for the demo t2v model laid out as the step-distill LoRAs are (ComfyUI keys): a low-rank
    pair with alpha and a bias delta for every block Linear, weight / bias deltas for the norms, a pair
    for the time projection and a bias delta for the head."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    out = {}
    linears = ["time_projection.1"] + [f"blocks.{i}.{m}" for i in range(cfg.num_layers) for m in (
        "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
        "cross_attn.o", "ffn.0", "ffn.2")]
    for module in linears:
        rows, cols = shapes[module + ".weight"]
        out[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(rank, cols, generator=gen) / cols ** 0.5
        out[f"diffusion_model.{module}.lora_up.weight"] = 0.1 * torch.randn(rows, rank, generator=gen) / rank ** 0.5
        out[f"diffusion_model.{module}.alpha"] = torch.tensor(float(rank))
        out[f"diffusion_model.{module}.diff_b"] = 0.01 * torch.randn(rows, generator=gen)
    for i in range(cfg.num_layers):
        for norm in ("self_attn.norm_q", "self_attn.norm_k", "norm3"):
            out[f"diffusion_model.blocks.{i}.{norm}.diff"] = 0.01 * torch.randn(cfg.dim, generator=gen)
        out[f"diffusion_model.blocks.{i}.norm3.diff_b"] = 0.01 * torch.randn(cfg.dim, generator=gen)
    out["diffusion_model.head.head.diff_b"] = 0.01 * torch.randn(shapes["head.head.bias"], generator=gen)
    return out


def write_demo_models(models_dir: str | Path) -> dict[str, Path]:
    """Write the demo files under ``models_dir`` (once; existing files are kept). Returns their paths:
    keys ``diffusion_models`` (t2v), ``text_encoders``, ``vae``, ``i2v``, ``flf2v``, ``clip_vision``, ``lora``
    (for the t2v model, laid out as a step-distill LoRA), ``vace``, and the Wan2.2 A14B expert pairs ``t2v_high`` /
    ``t2v_low``, ``i2v_high`` / ``i2v_low``, and the TI2V-5B model ``ti2v`` with its VAE ``vae22``."""
    models_dir = Path(models_dir)
    paths = {kind: models_dir / kind / name for kind, name in DEMO_FILES.items()}
    paths.update({key: models_dir / kind / name for key, (kind, name) in DEMO_IMAGE_FILES.items()})
    if all(p.is_file() for p in paths.values()):
        return paths
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    builders = {
        "diffusion_models": lambda: _random(WanDiT(DIT), 1),
        "vae": lambda: _random(WanVAE(VAE), 2),
        "text_encoders": lambda: {**_random(UMT5Encoder(TEXT), 3),
                                  "spiece_model": torch.frombuffer(bytearray(_tokenizer_model()), dtype=torch.uint8)},
        "i2v": lambda: _random(WanDiT(I2V), 4),
        "flf2v": lambda: _random(WanDiT(FLF2V), 5),
        "clip_vision": lambda: _random(ClipVision(CLIP), 6),
        "lora": lambda: _demo_lora(DIT, 7),
        "vace": lambda: _random(WanDiT(VACE), 8),
        "t2v_high": lambda: _random(WanDiT(DIT), 9),
        "t2v_low": lambda: _random(WanDiT(DIT), 10),
        "i2v_high": lambda: _random(WanDiT(I2V_A14B), 11),
        "i2v_low": lambda: _random(WanDiT(I2V_A14B), 12),
        "ti2v": lambda: _random(WanDiT(TI2V), 13),
        "vae22": lambda: _random(WanVAE22(VAE22), 14),
    }
    for kind, path in paths.items():
        if not path.is_file():
            temp = path.with_name(path.name + ".partial")
            save_file(builders[kind](), temp)
            temp.replace(path)
            log.info("wrote demo %s to %s", kind, path)
    return paths
