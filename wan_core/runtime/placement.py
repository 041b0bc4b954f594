"""One placement policy for every network: how weights are stored, where, and what dtype computes.

The same three settings mean the same thing for the DiT, the text encoder, the VAE and CLIP:

* ``storage_dtype``: how the weights are held (None: as the file has them; fp32 / bf16 / fp16 /
  fp8_e4m3fn). Layers cast weights to the compute dtype one at a time, so storage may be smaller
  than compute.
* ``compute_dtype``: the dtype of the matrix products: fp32 on CPU (bf16 matrix products there are
  ~200x slower), bf16 on CUDA (fp16 for CLIP, as the official code), unless told.
* ``device``: where the weights are put when loaded.

The VAE's and CLIP's convolutions and embeddings compute in the dtype they are stored in, so for
those two the storage dtype follows the compute dtype unless set, and fp8 storage is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

NETWORKS = ("dit", "text_encoder", "vae", "clip_vision")
CASTING_NETWORKS = ("dit", "text_encoder")
"""Networks whose every large layer casts its weight to the compute dtype when it runs."""

DTYPES: dict[str, torch.dtype | None] = {
    "default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
}
"""Storage dtype names shared by the nodes and the command line ("default": the file's)."""

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Placement:
    """Where and how one network's weights live and compute."""

    device: torch.device  # where the weights are put at load
    storage_dtype: torch.dtype | None  # how the weights are held (None: as in the file)
    compute_dtype: torch.dtype  # dtype of the matrix products


BF16_CAPABILITY = (8, 0)
"""CUDA GPUs older than Ampere (RTX 20xx, GTX 16xx, T4, V100) emulate bf16 and have no memory-efficient SDPA
kernel for it."""


def default_compute_dtype(network: str, device: torch.device | str) -> torch.dtype:
    """fp32 on CPU; on an accelerator bf16, or fp16 for CLIP (the official CLIP dtype). On a CUDA GPU older than
    Ampere: fp16 for the DiT (its residual stream stays fp32) and CLIP, fp32 for the text encoder and the VAE
    (UMT5 and the VAE overflow fp16; both run once per render)."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and torch.cuda.is_available() and \
            tuple(torch.cuda.get_device_capability(device)) < BF16_CAPABILITY:
        return torch.float16 if network in ("dit", "clip_vision") else torch.float32
    return torch.float16 if network == "clip_vision" else torch.bfloat16


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """A storage dtype from its name in :data:`DTYPES` (or a dtype, or None for the file's)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise InputError(f"dtype {name!r} is unknown; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_placement(network: str, storage_dtype: torch.dtype | str | None = None,
                      compute_dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu") -> Placement:
    """The placement of ``network`` from what the caller set; the defaults above fill the rest.

    Raises :class:`InputError` for an unknown network, a compute dtype that is not fp32 / bf16 /
    fp16, or fp8 storage for a network that cannot compute from it.
    """
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    device = torch.device(device)
    storage = parse_dtype(storage_dtype)
    if storage is not None and (not storage.is_floating_point or storage == torch.float64):
        raise InputError(f"storage dtype {storage} is not one of {', '.join(k for k in DTYPES if k != 'default')}")
    casting = network in CASTING_NETWORKS
    if not casting and storage is not None and storage.itemsize == 1:
        raise InputError(f"the {network.replace('_', ' ')} cannot be held in {storage}: its layers compute in "
                         "their stored dtype; use fp16, bf16 or fp32")
    compute = parse_dtype(compute_dtype) or (None if casting else storage) or default_compute_dtype(network, device)
    if compute not in COMPUTE_DTYPES:
        raise InputError(f"compute dtype {compute} is not one of fp32, bf16, fp16; fp8 is a storage dtype only")
    if not casting:
        if storage is not None and storage != compute:
            raise InputError(f"the {network.replace('_', ' ')} computes in the dtype it is stored in: storage "
                             f"{storage} and compute {compute} differ; set one of them (fp32, bf16 or fp16)")
        storage = compute
    return Placement(device, storage, compute)
