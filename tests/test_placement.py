"""One placement policy for every loader and node: storage dtype, compute dtype and device mean the same
thing for the DiT, the text encoder, the VAE and CLIP; the nodes reach the engine only through its API."""

from __future__ import annotations

import ast

import pytest
import torch
from safetensors.torch import save_file
from test_nodes import env  # noqa: F401  (the standalone host fixture with the demo models)
from tiny import T2V, random_official_state
from workflow_runner import ROOT, load_pack

import wan_core
from wan_core import InputError, resolve_placement
from wan_core.demo import DEMO_FILES, DEMO_IMAGE_FILES

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("network", "device", "compute"), [
    ("dit", CPU, torch.float32), ("dit", CUDA, torch.bfloat16),
    ("text_encoder", CPU, torch.float32), ("text_encoder", CUDA, torch.bfloat16),
    ("vae", CPU, torch.float32), ("vae", CUDA, torch.bfloat16),
    ("clip_vision", CPU, torch.float32), ("clip_vision", CUDA, torch.float16),
])
def test_default_compute_dtype_by_network_and_device(network, device, compute):
    placement = resolve_placement(network, device=device)
    assert placement.compute_dtype == compute and placement.device == device
    # networks whose layers cast keep the file's dtype; the VAE and CLIP hold what they compute in
    assert placement.storage_dtype == (None if network in ("dit", "text_encoder") else compute)


def test_storage_and_compute_are_independent_where_layers_cast():
    p = resolve_placement("dit", storage_dtype="fp8_e4m3fn", compute_dtype="bf16", device="cpu")
    assert (p.storage_dtype, p.compute_dtype) == (torch.float8_e4m3fn, torch.bfloat16)
    assert resolve_placement("vae", storage_dtype="fp16").compute_dtype == torch.float16  # storage sets both


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"network": "vae", "storage_dtype": "fp8_e4m3fn"}, "cannot be held in torch.float8_e4m3fn"),
    ({"network": "clip_vision", "storage_dtype": "fp16", "compute_dtype": "fp32"}, "storage torch.float16 and "
                                                                                     "compute torch.float32 differ"),
    ({"network": "dit", "compute_dtype": "fp8_e4m3fn"}, "fp8 is a storage dtype only"),
    ({"network": "dit", "storage_dtype": "int8"}, "dtype 'int8' is unknown; choose one of default, fp32"),
    ({"network": "dit", "storage_dtype": torch.int8}, "storage dtype torch.int8 is not one of"),
])
def test_placements_that_cannot_work_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_placement(**kwargs)


def test_every_loader_takes_the_same_three_arguments(tmp_path):
    save_file(random_official_state(T2V, seed=1), tmp_path / "dit.safetensors")
    dit = wan_core.load_dit(tmp_path / "dit.safetensors", storage_dtype="bf16", compute_dtype="fp32", device="cpu")
    assert dit.blocks[0].self_attn.q.weight.dtype == torch.bfloat16 and dit.compute_dtype == torch.float32
    paths = wan_core.demo.write_demo_models(tmp_path / "models")
    encoder = wan_core.load_text_encoder(paths["text_encoders"], storage_dtype="fp16", compute_dtype="fp32")
    assert encoder.model.shared.weight.dtype == torch.float16 and encoder.model.compute_dtype == torch.float32
    vae = wan_core.load_vae(paths["vae"], compute_dtype="bf16")
    assert vae.conv2.weight.dtype == torch.bfloat16 and vae.compute_dtype == torch.bfloat16
    clip = wan_core.load_clip_vision(paths["clip_vision"], storage_dtype="fp16")
    assert clip.vision_model.pre_layrnorm.weight.dtype == torch.float16 and clip.compute_dtype == torch.float16
    with pytest.raises(InputError, match="cannot be held in torch.float8_e4m3fn"):
        wan_core.load_vae(tmp_path / "no such file is opened before the check.safetensors",
                          storage_dtype="fp8_e4m3fn")


def test_nodes_compute_in_the_compute_devices_dtype_not_the_offload_devices(env, monkeypatch):  # noqa: F811
    """Weights load on the offload device (CPU); the dtype follows the GPU that computes: CLIP in fp16 (it
    used to stay fp32 there), the VAE in bf16, the DiT computing in bf16 from the file's weights."""
    pack = load_pack()
    host = pack.nodes.host
    monkeypatch.setattr(host, "compute_device", lambda: CUDA)
    nodes = pack.NODE_CLASS_MAPPINGS
    (clip,) = nodes["WanCoreCLIPVisionLoader"]().load(DEMO_IMAGE_FILES["clip_vision"][1])
    assert clip.compute_dtype == torch.float16 and clip.vision_model.pre_layrnorm.weight.device == CPU
    (vae,) = nodes["WanCoreVAELoader"]().load(DEMO_FILES["vae"], "default")
    assert vae.compute_dtype == torch.bfloat16 and vae.conv2.weight.dtype == torch.bfloat16
    (fp32_vae,) = nodes["WanCoreVAELoader"]().load(DEMO_FILES["vae"], "fp32")
    assert fp32_vae.compute_dtype == torch.float32
    (dit,) = nodes["WanCoreModelLoader"]().load(DEMO_FILES["diffusion_models"], "default")
    assert dit.compute_dtype == torch.bfloat16 and dit.blocks[0].ffn[0].weight.dtype == torch.float32


def test_nodes_import_the_engine_only_through_its_public_api():
    """``from ..wan_core import X`` only, and every X is in wan_core.__all__ (no reaching into submodules)."""
    public = set(wan_core.__all__)
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module == "wan_core", f"{path.name} imports wan_core.{node.module[9:]}"
                assert {a.name for a in node.names} <= public, f"{path.name}: {[a.name for a in node.names]}"
