"""Loader nodes: DiT, UMT5 text encoder, VAE. Each returns a wan_core object kept on the offload device.

Every loader follows wan_core's one placement policy: weights go to ComfyUI's offload device, stored
as chosen, and compute in the default dtype of the device ComfyUI computes on (see :func:`placement`).
"""

from __future__ import annotations

from ..wan_core import DTYPES, apply_loras, default_compute_dtype, load_dit, load_text_encoder, load_vae
from . import host

WEIGHT_DTYPES = list(DTYPES)
COMPUTE_CHOICES = {"default": None, "bf16": DTYPES["bf16"], "fp16": DTYPES["fp16"], "fp32": DTYPES["fp32"],
                   "fp8": None}
"""The model loader's compute dtype choices (default: the compute device's, see default_compute_dtype; fp8: the
default, with the blocks' fp8 layers multiplying in fp8 where the GPU can)."""
COMPUTE_STORED_DTYPES = ["default", "bf16", "fp16", "fp32"]  # networks that compute in their stored dtype
_DTYPE_TIP = ("Storage precision of the weights. 'default' keeps the file's. fp8 halves memory again at a small "
              "quality cost; compute always runs in bf16 on GPU and fp32 on CPU.")


class WanCoreModelLoader:
    DESCRIPTION = ("Loads a Wan2.1 diffusion model (t2v 1.3B/14B, i2v 14B, flf2v 14B, VACE 1.3B/14B, detected from "
                   "the file) "
                   "from models/diffusion_models (or models/unet). Official, ComfyUI and diffusers layouts, "
                   "fp32/bf16/fp16/fp8 and scaled-fp8 files, and GGUF files (city96's Wan layout: Q8_0, Q6_K, Q5_K, "
                   "Q5_0/1, Q4_K, Q4_0/1, Q3_K, Q2_K, F16/BF16/F32; they stay quantized) are accepted.")
    CATEGORY = "WanCore/loaders"
    RETURN_TYPES = ("WANCORE_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (host.list_models("diffusion_models"),
                           {"tooltip": "Wan2.1 DiT file in models/diffusion_models (.safetensors, .pth or .gguf)."}),
            "weight_dtype": (WEIGHT_DTYPES, {"default": "default", "tooltip": _DTYPE_TIP}),
        }, "optional": {
            "compute_dtype": (list(COMPUTE_CHOICES), {"default": "default", "tooltip": "The dtype of the matrix "
                              "products. default: bf16 on recent GPUs, fp16 on GPUs older than RTX 30xx / A100 "
                              "(T4, V100, RTX 20xx), fp32 on the CPU. fp16 is faster on old GPUs, fp32 exact. fp8 "
                              "(as fp8_e4m3fn_fast): the weights are held in fp8 and the blocks multiply in fp8 on "
                              "GPUs with fp8 tensor cores (RTX 40xx, L4, L40, H100), faster at a small quality "
                              "cost; elsewhere they compute as default."}),
        }}

    def load(self, model_name, weight_dtype, compute_dtype="default"):
        where = placement("dit", weight_dtype)
        if COMPUTE_CHOICES.get(compute_dtype) is not None:
            where["compute_dtype"] = COMPUTE_CHOICES[compute_dtype]
        return (load_dit(host.model_path("diffusion_models", model_name), **where, fp8_matmul=compute_dtype == "fp8"),)


class WanCoreLoraLoader:
    DESCRIPTION = ("Adds a LoRA from models/loras to a Wan2.1 diffusion model (chain several: they add up). The "
                   "loaded model is not changed: each render applies the LoRAs, merged into bf16 / fp16 / fp32 "
                   "weights or, for fp8 and GGUF models, added where each layer computes; changing a strength "
                   "reloads nothing. ComfyUI, musubi, kohya and diffusers LoRA files, step-distill LoRAs with "
                   "their full deltas, and i2v LoRAs (image branch) are read; a key that cannot be placed is an "
                   "error that lists it.")
    CATEGORY = "WanCore/loaders"
    RETURN_TYPES = ("WANCORE_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("WANCORE_MODEL", {"tooltip": "The diffusion model (or another LoRA loader's output)."}),
            "lora_name": (host.list_models("loras"), {"tooltip": "LoRA file in models/loras."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": "How much "
                         "of the LoRA to add (0: none; distill LoRAs are made for 1)."}),
        }}

    def load(self, model, lora_name, strength):
        return (apply_loras(model, [(host.model_path("loras", lora_name), strength)]),)


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
            "dtype": (WEIGHT_DTYPES, {"default": "default", "tooltip": _DTYPE_TIP}),
        }, "optional": {
            "tokenizer": ("STRING", {"default": "", "tooltip": "Path to spiece.model or tokenizer.json, only if "
                                     "the encoder file has no tokenizer inside and none lies next to it."}),
        }}

    def load(self, model_name, dtype, tokenizer=""):
        encoder = load_text_encoder(host.model_path("text_encoders", model_name), tokenizer=tokenizer or None,
                                    **placement("text_encoder", dtype))
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
            "dtype": (COMPUTE_STORED_DTYPES, {
                "default": "default", "tooltip": "Precision the VAE runs in: 'default' is bf16 on GPU and fp32 on "
                                                 "CPU; fp32 on GPU is slower and exact."}),
        }}

    def load(self, vae_name, dtype):
        return (load_vae(host.model_path("vae", vae_name), **placement("vae", dtype, stored_is_compute=True)),)


def placement(network: str, dtype: str = "default", stored_is_compute: bool = False) -> dict:
    """Loader arguments: weights on the offload device, stored as ``dtype`` ("default": the file's), computing
    in ``dtype`` when the network computes in what it stores, else in the compute device's default dtype."""
    chosen = DTYPES[dtype]
    compute = chosen if stored_is_compute and chosen else default_compute_dtype(network, host.compute_device())
    storage = None if stored_is_compute else chosen
    return {"storage_dtype": storage, "compute_dtype": compute, "device": host.offload_device()}
