"""Loader nodes: DiT, UMT5 text encoder, VAE. Each returns a wan_core object kept on the offload device."""

from __future__ import annotations

import torch

from ..wan_core import load_dit, load_text_encoder, load_vae
from . import host

WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn}
_DTYPE_TIP = ("Storage precision of the weights. 'default' keeps the file's. fp8 halves memory again at a small "
              "quality cost; compute always runs in bf16 on GPU and fp32 on CPU.")


class WanCoreModelLoader:
    DESCRIPTION = ("Loads a Wan2.1 diffusion model (t2v 1.3B/14B, i2v 14B, flf2v 14B, detected from the file) "
                   "from models/diffusion_models. Official, ComfyUI and diffusers layouts, fp32/bf16/fp16/fp8 "
                   "and scaled-fp8 files are accepted.")
    CATEGORY = "WanCore/loaders"
    RETURN_TYPES = ("WANCORE_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (host.list_models("diffusion_models"),
                           {"tooltip": "Wan2.1 DiT file in models/diffusion_models."}),
            "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": _DTYPE_TIP}),
        }}

    def load(self, model_name, weight_dtype):
        model = load_dit(host.model_path("diffusion_models", model_name), dtype=WEIGHT_DTYPES[weight_dtype],
                         device=host.offload_device(), compute_dtype=_compute_dtype())
        return (model,)


class WanCoreTextEncoderLoader:
    DESCRIPTION = ("Loads the UMT5-XXL text encoder from models/text_encoders (ComfyUI's umt5_xxl_* files carry "
                   "their tokenizer; the official .pth needs spiece.model beside it or a tokenizer path).")
    CATEGORY = "WanCore/loaders"
    RETURN_TYPES = ("WANCORE_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (host.list_models("text_encoders"), {"tooltip": "UMT5-XXL file in models/text_encoders."}),
            "dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": _DTYPE_TIP}),
        }, "optional": {
            "tokenizer": ("STRING", {"default": "", "tooltip": "Path to spiece.model or tokenizer.json, only if "
                                     "the encoder file has no tokenizer inside and none lies next to it."}),
        }}

    def load(self, model_name, dtype, tokenizer=""):
        encoder = load_text_encoder(host.model_path("text_encoders", model_name), tokenizer=tokenizer or None,
                                    dtype=WEIGHT_DTYPES[dtype], device=host.offload_device(),
                                    compute_dtype=_compute_dtype())
        return (encoder,)


class WanCoreVAELoader:
    DESCRIPTION = "Loads the Wan2.1 VAE (wan_2.1_vae.safetensors, Wan2.1_VAE.pth or diffusers layout) from models/vae."
    CATEGORY = "WanCore/loaders"
    RETURN_TYPES = ("WANCORE_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (host.list_models("vae"), {"tooltip": "Wan2.1 VAE file in models/vae."}),
            "dtype": (["default", "bf16", "fp16", "fp32"], {
                "default": "default", "tooltip": "Precision the VAE runs in: 'default' is bf16 on GPU and fp32 on "
                                                 "CPU; fp32 on GPU is slower and exact."}),
        }}

    def load(self, vae_name, dtype):
        device = host.compute_device()
        chosen = WEIGHT_DTYPES[dtype] or (torch.float32 if device.type == "cpu" else torch.bfloat16)
        return (load_vae(host.model_path("vae", vae_name), dtype=chosen, device=host.offload_device()),)


def _compute_dtype() -> torch.dtype:
    return torch.float32 if host.compute_device().type == "cpu" else torch.bfloat16
