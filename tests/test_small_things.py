"""Small things that looked broken: the preview's size, the error type ComfyUI shows, the loader's description,
the fixed-step samplers' step counts, and the text encoder's memory-plan line."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from PIL import ImageOps
from workflow_runner import load_pack

import wan_core
from wan_core.demo import DEMO_FILES, write_demo_models
from wan_core.runtime.memory_plan import UNLIMITED, plan_for, plan_text_encoder


def _previewed_size(monkeypatch, latent_hw: tuple[int, int], preview_size: int = 512) -> tuple[int, int]:
    """(width, height) of the preview ComfyUI's server sends for one step of a render with ``latent_hw`` cells:
    it scales the image to fit (max_size, max_size) with ImageOps.contain, enlarging small ones."""
    node_host = load_pack().nodes.host
    sent = []

    class Bar:
        def __init__(self, total):
            pass

        def update_absolute(self, value, total=None, preview=None):
            sent.append(preview)

    monkeypatch.setattr(node_host, "IN_COMFYUI", True)
    monkeypatch.setattr(node_host, "_utils", types.SimpleNamespace(ProgressBar=Bar))
    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(preview_size=preview_size)
    monkeypatch.setitem(sys.modules, "comfy", types.ModuleType("comfy"))
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
    node_host.HOST.progress(4)(1, torch.randn(1, 16, 3, *latent_hw))
    kind, image, max_size = sent[0]
    return ImageOps.contain(image, (max_size, max_size)).size if max_size is not None else image.size


def test_the_preview_is_never_shown_larger_than_the_render(monkeypatch):
    """Before: a 64x48 render's 8x6-cell preview went out with max size 512 and was enlarged to 512x384, the size
    the front end labels it with. Now at most the render's own size; big renders still fit the preview size."""
    assert _previewed_size(monkeypatch, (6, 8)) == (64, 48)
    assert _previewed_size(monkeypatch, (60, 104)) == (512, 295)  # 832x480 under ComfyUI's default 512
    assert _previewed_size(monkeypatch, (60, 104), preview_size=1024) == (832, 480)


def _type_name(cls) -> str:
    """The name ComfyUI's execution shows for an exception type (module + qualified name)."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def test_comfyui_shows_our_errors_under_a_name_that_does_not_depend_on_the_install_folder(tmp_path, monkeypatch):
    pack = load_pack()  # imported as ComfyUI imports custom_nodes/<folder>: a package named after the folder
    write_demo_models(tmp_path)
    monkeypatch.setenv("WANCORE_MODELS", str(tmp_path))
    nodes = pack.NODE_CLASS_MAPPINGS
    model = nodes["WanCoreModelLoader"]().load(DEMO_FILES["diffusion_models"], "default")[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
    with pytest.raises(Exception) as err:
        nodes["WanCoreSampler"]().run(model, embeds, 64, 48, 5, 0, 50, 1.0, 5.0, "lightx2v_4step", 1.0,
                                      resume="off")
    assert _type_name(type(err.value)) == "wan_core.InputError"
    assert "set steps to 4 (got 50)" in str(err.value)
    with pytest.raises(Exception) as err:
        pack.nodes.host.model_path("vae", "missing.safetensors")
    assert _type_name(type(err.value)) == "wancore_nodes.HostError"
    for name in ("WanCoreError", "InputError", "CheckpointError", "OutputError", "RenderInterrupted", "RenderError"):
        assert _type_name(getattr(pack.wan_core, name)) == f"wan_core.{name}"


def test_the_loader_and_the_steps_tooltip_say_what_they_take():
    nodes = load_pack().NODE_CLASS_MAPPINGS
    assert "VACE" in nodes["WanCoreModelLoader"].DESCRIPTION
    steps = nodes["WanCoreSampler"].INPUT_TYPES()["required"]["steps"][1]["tooltip"]
    assert "lightx2v_4step exactly 4" in steps and "causvid 4 on 1.3B and 1 to 9 on 14B" in steps


def test_plan_lines_speak_of_cfg_only_where_there_is_cfg(tmp_path):
    paths = write_demo_models(tmp_path)
    encoder = wan_core.load_text_encoder(paths["text_encoders"])
    for budget in (UNLIMITED, 2**20):  # whole, and streamed layer by layer
        line = plan_text_encoder(encoder.model, "cpu", budget, 2, 16).describe()
        assert "CFG" not in line and "blocks resident" in line, line
    dit = wan_core.load_dit(paths["diffusion_models"])
    shape = (1, 16, 2, 6, 8)
    assert "CFG batched" in plan_for(dit, shape, True, "cpu", UNLIMITED).describe()
    assert "CFG" not in plan_for(dit, shape, False, "cpu", UNLIMITED).describe()
