"""Settings that mean nothing are refused by name before any work, replay checks the manifest it is given, and a
resume file whose state is unusable is removed instead of failing every retry (issue 22, items 3, 5 and 6):
through the sampler node, the VACE node, the CLI and replay."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_nodes import SMALL, _t2v_graph, env  # noqa: F401  (the standalone host with the demo models)
from workflow_runner import load_pack

import wan_core
from wan_core.cli import main
from wan_core.demo import DEMO_FILES

SETTINGS = {**SMALL, "seed": 1, "cfg": 5.0, "shift": 5.0, "sampler": "unipc", "denoise": 1.0}


@pytest.mark.parametrize("budget", [-1.0, math.nan, math.inf])
def test_the_sampler_node_refuses_a_budget_that_means_nothing(env, monkeypatch, budget):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    host = load_pack().nodes.host
    moved = []
    monkeypatch.setattr(host, "on_compute_device", lambda *models: moved.extend(models))
    with pytest.raises(load_pack().wan_core.InputError, match=f"vram_budget must be a finite number at least 0, "
                                                              f"got {budget}; it is in GiB; 0 is automatic"):
        nodes["WanCoreSampler"]().run(model, embeds, **SETTINGS, vram_budget_gb=budget)
    assert moved == []


@pytest.mark.parametrize("budget", ["-1", "nan", "inf"])
def test_the_cli_refuses_a_budget_that_means_nothing_before_loading(tmp_path, capsys, budget):
    out = tmp_path / "out" / "o.mp4"
    code = main(["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "x", "--out", str(out),
                 "--vram-budget", budget])
    assert code == 2 and "vram_budget must be a finite number at least 0" in capsys.readouterr().err
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_a_vace_mask_with_nan_is_refused_by_the_node(env):  # noqa: F811
    nodes = load_pack().NODE_CLASS_MAPPINGS
    vae = nodes["WanCoreVAELoader"]().load(DEMO_FILES["vae"], "default")[0]
    mask = torch.ones(5, 48, 64)
    mask[2, 3, 4] = math.nan
    with pytest.raises(load_pack().wan_core.InputError, match="the VACE mask holds 1 NaN/Inf value"):
        nodes["WanCoreVACEConditioning"]().build(vae, 64, 48, 5, 1.0, mask=mask)


def _video_with(tmp_path, manifest) -> str:
    frames = torch.rand(5, 16, 16, 3)
    return wan_core.write_video(frames, tmp_path / "edited.mp4", metadata={wan_core.MANIFEST_KEY: json.dumps(manifest)})


@pytest.mark.parametrize(("manifest", "message"), [
    (["t2v", "a fox"], "its run manifest is a JSON list, not the mapping a render writes"),
    ({"task": "t2v", "negative": "", "models": {}}, "its run manifest has no 'prompt'"),
    ({"task": "t2v", "prompt": 7, "negative": "", "models": {}}, "its run manifest's 'prompt' is 7"),
    ({"task": "t2v", "prompt": "a", "negative": "", "models": {"dit": "x.safetensors"}, "width": 64, "height": 48,
      "frames": 5, "fps": 16, "storage_dtype": "default"}, "names a file as 'x.safetensors'"),
])
def test_replay_refuses_a_manifest_of_the_wrong_shape_by_name(tmp_path, capsys, manifest, message):
    video = _video_with(tmp_path, manifest)
    assert main(["replay", str(video), "--models", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(video) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.mp4"]  # nothing rendered, nothing written


def test_a_prompt_that_starts_with_a_dash_replays(tmp_path):
    args = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt=-fox", "--negative=-blur",
            "--steps", "2", "--frames", "5", "--width", "64", "--height", "48", "--keep-latent"]
    assert main([*args, "--out", str(tmp_path / "first.mp4")]) == 0
    assert wan_core.read_manifest(tmp_path / "first.mp4")["prompt"] == "-fox"
    assert main(["replay", str(tmp_path / "first.mp4"), "--models", str(tmp_path / "models")]) == 0
    assert torch.equal(load_file(tmp_path / "first-replay.latent.safetensors")["latent"],
                       load_file(tmp_path / "first.latent.safetensors")["latent"])


@pytest.mark.parametrize("damage", ["nan", "shape"])
def test_an_unusable_resume_file_is_removed_and_the_render_starts_fresh(env, monkeypatch, caplog, damage):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    host = load_pack().nodes.host
    settings = {**SETTINGS, "steps": 5}
    whole = nodes["WanCoreSampler"]().run(model, embeds, **settings, resume="off")[0]["samples"]
    calls = []
    monkeypatch.setattr(host, "interrupt_requested", lambda: calls.append(1) or len(calls) >= 2)
    with pytest.raises(load_pack().wan_core.RenderInterrupted):
        nodes["WanCoreSampler"]().run(model, embeds, **settings)
    (path,) = host.resume_folder().glob("*.safetensors")
    with safe_open(path, framework="pt") as f:  # the same render's file (its identity), with a damaged state
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["x"] = tensors["x"] * math.nan if damage == "nan" else tensors["x"][:, :, :1].contiguous()
    save_file(tensors, path, metadata=meta)
    monkeypatch.setattr(host, "interrupt_requested", lambda: False)
    with caplog.at_level(logging.WARNING):
        again = nodes["WanCoreSampler"]().run(model, embeds, **settings)[0]["samples"]
    why = ("its x holds NaN/Inf values" if damage == "nan"
           else "its x is (1, 16, 1, 6, 8), the render's latent (1, 16, 2, 6, 8)")
    assert f"resume file {path} cannot be used: {why}; removed, starting fresh" in caplog.text
    assert torch.equal(again, whole) and not path.exists()
