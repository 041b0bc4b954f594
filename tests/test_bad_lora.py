"""LoRA contents are checked when the file is read and strengths when they are given; a LoRA that overflows the
weights during a render is named (issue 22, item 1): through the LoRA node, the sampler node and the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from test_nodes import SMALL, _t2v_graph, env  # noqa: F401  (the standalone host with the demo models)
from tiny_lora import block_modules, random_lora, write_lora
from workflow_runner import load_pack

from wan_core.cli import main
from wan_core.loading.lora import ModuleNames, lora_key

SETTINGS = {**SMALL, "steps": 2, "seed": 1, "cfg": 5.0, "shift": 5.0, "sampler": "euler", "denoise": 1.0}


def _lora(root, name: str, damage: str, model) -> str:
    """A LoRA for the demo model in models/loras, damaged as ``damage`` says."""
    cfg = model.config
    state = random_lora(cfg, block_modules(cfg)[:3])
    names = ModuleNames(cfg.num_layers)
    down, up = (lora_key("blocks.0.self_attn.k", role, "official", names) for role in ("down", "up"))
    if damage == "nan":
        state[down][0, 0] = math.nan
    elif damage == "inf":
        state[up][1, 1] = math.inf
    elif damage == "rank":
        state[up] = state[up][:, :3].contiguous()
    elif damage == "alpha":
        state[lora_key("blocks.0.self_attn.k", "alpha", "official", names)] = torch.tensor([8.0, 8.0])
    elif damage == "huge":  # finite, but merged at a high strength it overflows
        state[down].fill_(1e19)
        state[up].fill_(1e19)
    (root / "models" / "loras").mkdir(exist_ok=True)
    return write_lora(root / "models" / "loras" / name, state)


@pytest.mark.parametrize(("damage", "message"), [
    ("nan", r"1 update\(s\) hold NaN/Inf values: blocks\.0\.self_attn\.k \(down\)"),
    ("inf", r"1 update\(s\) hold NaN/Inf values: blocks\.0\.self_attn\.k \(up\)"),
    ("rank", r"the low-rank pair of blocks\.0\.self_attn\.k does not agree: down is \(4, \d+\), up is \(\d+, 3\)"),
    ("alpha", r"the alpha of blocks\.0\.self_attn\.k has 2 values"),
])
def test_a_damaged_lora_file_is_refused_by_the_node_naming_the_key(env, damage, message):  # noqa: F811
    nodes, model, _, _ = _t2v_graph(env)
    name = f"{damage}.safetensors"
    _lora(env, name, damage, model)
    with pytest.raises(load_pack().wan_core.CheckpointError, match=f"{name}: {message}"):
        nodes["WanCoreLoraLoader"]().load(model, name, 1.0)
    assert not getattr(model, "weight_patches", None)  # the loaded model is untouched


@pytest.mark.parametrize("strength", [math.nan, math.inf, -math.inf])
def test_a_strength_that_is_not_a_number_is_refused_by_the_node(env, strength):  # noqa: F811
    nodes, model, _, _ = _t2v_graph(env)
    _lora(env, "good.safetensors", "", model)
    with pytest.raises(load_pack().wan_core.InputError,
                       match=f"LoRA good.safetensors strength must be a finite number .*got {strength}"):
        nodes["WanCoreLoraLoader"]().load(model, "good.safetensors", strength)


@pytest.mark.parametrize("spec", ["nan.safetensors", "good.safetensors:nan"])
def test_the_cli_refuses_a_bad_lora_before_loading_a_model(env, tmp_path, capsys, spec):  # noqa: F811
    _, model, _, _ = _t2v_graph(env)
    _lora(env, "nan.safetensors", "nan", model)
    _lora(env, "good.safetensors", "", model)
    out = tmp_path / "o.mp4"
    code = main(["t2v", "--demo", "--models", str(env / "models"), "--prompt", "x", "--out", str(out),
                 "--width", "64", "--height", "48", "--frames", "5", "--steps", "2", "--lora", spec])
    err = capsys.readouterr().err
    expected = ("nan.safetensors: 1 update(s) hold NaN/Inf values" if spec.startswith("nan")
                else "LoRA good.safetensors strength must be a finite number")
    assert code == 2 and expected in err and "Traceback" not in err and "sampling" not in err
    assert not list(tmp_path.iterdir())


def test_a_lora_that_overflows_the_weights_is_named_not_called_valid(env):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    _lora(env, "huge.safetensors", "huge", model)
    strong = nodes["WanCoreLoraLoader"]().load(model, "huge.safetensors", 2.0)[0]
    with pytest.raises(load_pack().wan_core.InputError) as caught:
        nodes["WanCoreSampler"]().run(strong, embeds, **SETTINGS, resume="off")
    text = str(caught.value)
    assert "huge.safetensors at 2" in text and "blocks.0.self_attn.k.weight NaN/Inf" in text
    assert "lower it" in text and "valid" not in text
