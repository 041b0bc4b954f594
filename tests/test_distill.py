"""Few-step distilled renders: the published schedules, and a 4-step cfg-1 render with a LoRA through the
nodes and the CLI (with its manifest and replay)."""

from __future__ import annotations

import pytest
import torch

import wan_core
from wan_core.sampling.loop import build_schedule


def test_lightx2v_schedule_is_the_published_one():
    """LightX2V ``WanStepDistillScheduler``, ``denoising_step_list`` [1000, 750, 500, 250], shift 5: the training
    sigmas 1 - k/1000 at k = 0, 250, 500, 750 are 1, 0.75, 0.5, 0.25; shifted 5 s / (1 + 4 s):
    1, 3.75 / 4 = 0.9375, 2.5 / 3 = 0.8333.., 1.25 / 2 = 0.625; the model sees t = 1000 sigma, unrounded."""
    schedule = build_schedule("lightx2v_4step", 4, 5.0, 1.0)
    torch.testing.assert_close(schedule.sigmas, torch.tensor([1.0, 0.9375, 2.5 / 3, 0.625, 0.0]))
    torch.testing.assert_close(schedule.timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))
    shifted = build_schedule("lightx2v_4step", 4, 8.0, 1.0)  # shift 8: 6 / 6.25, 4 / 4.5, 2 / 2.75
    torch.testing.assert_close(shifted.sigmas, torch.tensor([1.0, 0.96, 4 / 4.5, 2 / 2.75, 0.0]))
    with pytest.raises(wan_core.InputError, match="set steps to 4"):
        build_schedule("lightx2v_4step", 6, 5.0, 1.0)


def test_causvid_schedule_is_the_published_one():
    """The CausVid LoRA schedule: 14B timesteps [999, 934, 862, 756, 603, 410, 250, 140, 74] (the first
    ``steps``), 1.3B [1000, 750, 500, 250] (4 steps only); sigma = t / 1000 without shift, then 0."""
    big = build_schedule("causvid", 6, 8.0, 1.0, dim=5120)
    assert big.timesteps.tolist() == [999.0, 934.0, 862.0, 756.0, 603.0, 410.0]
    torch.testing.assert_close(big.sigmas, torch.tensor([0.999, 0.934, 0.862, 0.756, 0.603, 0.41, 0.0]))
    small = build_schedule("causvid", 4, 5.0, 1.0, dim=1536)
    assert small.timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0]
    assert build_schedule("causvid", 4, 3.0, 1.0, dim=1536).sigmas.tolist() == small.sigmas.tolist()  # no shift
    with pytest.raises(wan_core.InputError, match="exactly 4"):
        build_schedule("causvid", 6, 5.0, 1.0, dim=1536)
    with pytest.raises(wan_core.InputError, match="1 to 9"):
        build_schedule("causvid", 10, 5.0, 1.0, dim=5120)
    with pytest.raises(wan_core.InputError, match="denoise to 1.0"):
        build_schedule("causvid", 4, 5.0, 0.5, dim=1536)


def test_a_4_step_cfg_1_render_with_a_lora_through_the_nodes(tmp_path, monkeypatch):
    from workflow_runner import load_pack

    from wan_core.demo import DEMO_FILES, DEMO_IMAGE_FILES, write_demo_models

    write_demo_models(tmp_path / "models")
    monkeypatch.setenv("WANCORE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("WANCORE_OUTPUT", str(tmp_path / "output"))
    nodes = load_pack().NODE_CLASS_MAPPINGS
    model = nodes["WanCoreModelLoader"]().load(DEMO_FILES["diffusion_models"], "default")[0]
    lora = DEMO_IMAGE_FILES["lora"][1]
    with_lora = nodes["WanCoreLoraLoader"]().load(model, lora, 1.0)[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
    settings = dict(width=64, height=48, frames=5, seed=1, steps=4, cfg=1.0, shift=5.0, sampler="lightx2v_4step",
                    denoise=1.0, resume="off")
    plain = nodes["WanCoreSampler"]().run(model, embeds, **settings)[0]["samples"]
    distilled = nodes["WanCoreSampler"]().run(with_lora, embeds, **settings)[0]["samples"]
    assert torch.isfinite(distilled).all() and (distilled - plain).abs().max() > 1e-3
    zero = nodes["WanCoreLoraLoader"]().load(model, lora, 0.0)[0]
    assert torch.equal(nodes["WanCoreSampler"]().run(zero, embeds, **settings)[0]["samples"], plain)
    assert not hasattr(model, "weight_patches")  # the loaded model never carries the LoRA


def test_cli_lora_flag_manifest_and_replay(tmp_path):
    from safetensors.torch import load_file

    from wan_core.cli import main
    from wan_core.demo import DEMO_IMAGE_FILES, write_demo_models
    from wan_core.replay import replay_argv

    write_demo_models(tmp_path / "models" / "demo")
    lora = tmp_path / "models" / "demo" / "loras" / DEMO_IMAGE_FILES["lora"][1]
    args = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "4", "--frames",
            "5", "--cfg", "1", "--sampler", "lightx2v_4step", "--keep-latent", "--resume", "off"]
    assert main([*args, "--out", str(tmp_path / "plain.mp4")]) == 0
    assert main([*args, "--out", str(tmp_path / "lora.mp4"), "--lora", f"{lora}:0.8"]) == 0
    plain = load_file(tmp_path / "plain.latent.safetensors")["latent"]
    got = load_file(tmp_path / "lora.latent.safetensors")["latent"]
    assert (got - plain).abs().max() > 1e-3
    manifest = wan_core.read_manifest(tmp_path / "lora.mp4")
    assert manifest["loras"][0]["strength"] == 0.8 and manifest["loras"][0]["file"]["name"] == lora.name
    argv = replay_argv(tmp_path / "lora.mp4", tmp_path / "models", None, None)
    assert argv[argv.index("--lora") + 1] == f"{lora}:0.8"
    assert main([*args, "--out", str(tmp_path / "bad.mp4"), "--lora", "missing.safetensors"]) == 2
    assert not (tmp_path / "bad.mp4").exists()
