"""Renders that are never lost: checkpointed sampling resumes bit-identically, stale or damaged resume files
are ignored, and a render can stop after N steps and continue later with the same result as one go."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny import I2V, T2V, inputs, random_official_state

import wan_core
import wan_core.demo
import wan_core.models.vae_tiling
from wan_core import RenderInterrupted, SampleRequest
from wan_core.sampling.resume import ResumeFile

REQUEST = SampleRequest(80, 64, 9)
STEPS = 6


def _model(cfg=T2V, seed=2):
    model = wan_core.WanDiT(cfg)
    model.load_state_dict(random_official_state(cfg, seed=seed))
    return model.eval().requires_grad_(False)


def _conditioning(cfg):
    x, t, context, clip_fea, y = inputs(cfg, frames=3, h=8, w=10, seed=5)
    negative = context.flip(1)
    return context, negative, ({"clip_fea": clip_fea, "y": y} if cfg.has_image_branch else {})


def _interrupt_at(step):
    seen = []
    return lambda: seen.append(1) or len(seen) >= step


@pytest.mark.parametrize("sampler", ["unipc", "dpm++", "euler"])
@pytest.mark.parametrize("cfg", [T2V, I2V], ids=["t2v", "i2v"])
def test_an_interrupted_render_resumes_bit_identically(tmp_path, caplog, sampler, cfg):
    model = _model(cfg)
    context, negative, image = _conditioning(cfg)
    settings = dict(request=REQUEST, seed=7, steps=STEPS, cfg=5.0, sampler=sampler, **image)
    whole = wan_core.sample(model, context, negative, **settings)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    with pytest.raises(RenderInterrupted, match="after step 3 of 6"):
        wan_core.sample(model, context, negative, **settings, resume=resume, interrupt=_interrupt_at(3))
    assert resume.path.is_file()
    calls = []
    counting = wan_core.RenderContext(runner=lambda blocks, h, *a: calls.append(1) or
                                      wan_core.ResidentRunner()(blocks, h, *a))
    with caplog.at_level(logging.INFO):
        resumed = wan_core.sample(model, context, negative, **settings, resume=resume, render=counting)
    assert "resuming from step 3 of 6" in caplog.text
    assert len(calls) == STEPS - 3  # only the remaining steps ran
    assert torch.equal(resumed, whole)
    assert not resume.path.exists()  # removed when the render finished


@pytest.mark.parametrize("change", [{"seed": 8}, {"cfg": 4.0}, {"shift": 3.0}, {"request": SampleRequest(96, 64, 9)},
                                    {"prompt": True}, {"model": True}])
def test_a_resume_file_of_another_render_is_ignored(tmp_path, caplog, change):
    model, other_model = _model(), _model(seed=3)
    context, negative, _ = _conditioning(T2V)
    settings = dict(request=REQUEST, seed=7, steps=STEPS, cfg=5.0, shift=5.0)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    with pytest.raises(RenderInterrupted):
        wan_core.sample(model, context, negative, **settings, resume=resume, interrupt=_interrupt_at(2))
    prompt = context * 1.01 if change.pop("prompt", False) else context
    use = other_model if change.pop("model", False) else model
    settings.update(change)
    fresh = wan_core.sample(use, prompt, negative, **settings)
    with caplog.at_level(logging.INFO):
        got = wan_core.sample(use, prompt, negative, **settings, resume=resume)
    assert "belongs to another render" in caplog.text and "resuming" not in caplog.text
    assert torch.equal(got, fresh)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_resume_file_is_ignored(tmp_path, caplog, damage):
    model = _model()
    context, negative, _ = _conditioning(T2V)
    settings = dict(request=REQUEST, seed=7, steps=STEPS)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    with pytest.raises(RenderInterrupted):
        wan_core.sample(model, context, negative, **settings, resume=resume, interrupt=_interrupt_at(2))
    data = resume.path.read_bytes()
    resume.path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x10" * 100, "empty": b""}[damage])
    with caplog.at_level(logging.WARNING):
        got = wan_core.sample(model, context, negative, **settings, resume=resume)
    assert "is damaged" in caplog.text
    assert torch.equal(got, wan_core.sample(model, context, negative, **settings))


@pytest.mark.parametrize("sampler", ["unipc", "dpm++"])
def test_stop_after_n_then_continue_equals_one_go(tmp_path, sampler):
    model = _model()
    context, negative, _ = _conditioning(T2V)
    settings = dict(request=REQUEST, seed=7, steps=STEPS, sampler=sampler)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    preview = wan_core.sample(model, context, negative, **settings, resume=resume, stop_after=2)
    assert preview.shape == (1, 16, 3, 8, 10) and resume.path.is_file()
    middle = wan_core.sample(model, context, negative, **settings, resume=resume, stop_after=4)
    assert not torch.equal(middle, preview)  # a later, sharper prediction
    final = wan_core.sample(model, context, negative, **settings, resume=resume)
    assert torch.equal(final, wan_core.sample(model, context, negative, **settings))
    assert not resume.path.exists()


@pytest.mark.parametrize("sampler", ["unipc", "dpm++", "euler"])
def test_the_same_stopped_render_run_again_hands_out_the_same_preview_without_computing(tmp_path, sampler):
    """Run again with the same stop_after, a stopped render is at its stop already: the same prediction comes back
    and the model is not called (before, it computed one more step and stopped one step later)."""
    model = _model()
    context, negative, _ = _conditioning(T2V)
    settings = dict(request=REQUEST, seed=7, steps=STEPS, sampler=sampler, stop_after=2)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    preview = wan_core.sample(model, context, negative, **settings, resume=resume)
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        again = wan_core.sample(model, context, negative, **settings, resume=resume)
    finally:
        hook.remove()
    assert torch.equal(again, preview) and calls == []


def _cli_args(tmp_path, name, *extra):
    return ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "6",
            "--frames", "5", "--out", str(tmp_path / name), "--keep-latent", *extra]


KILL_AT = """
import os, signal, sys
import wan_core.sampling.resume as resume
from wan_core.cli import main
save = resume.ResumeFile.save
def save_then_die(self, identity, steps, state, manifest=None):
    save(self, identity, steps, state, manifest)
    if state.step == int(sys.argv[1]):
        self.flush()  # step k is on disk (the writer works in the background)
        os.kill(os.getpid(), signal.SIGKILL)  # a crash right after step k was saved
resume.ResumeFile.save = save_then_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("task", "sampler"), [("t2v", "unipc"), ("t2v", "dpm++"), ("t2v", "euler"), ("i2v", "unipc")])
def test_a_killed_cli_render_resumes_and_ends_bit_identical(tmp_path, task, sampler):
    import subprocess
    import sys

    from safetensors.torch import load_file

    from wan_core.cli import main

    extra = ["--sampler", sampler]
    if task == "i2v":
        image = wan_core.write_video(torch.rand(1, 96, 160, 3), tmp_path / "start", fmt="png") / "frame_00000.png"
        extra += ["--image", str(image)]

    def task_args(name, *more):
        return [task, *_cli_args(tmp_path, name, *extra, *more)[1:]]

    assert main(task_args("whole.mp4", "--resume", "off")) == 0
    args = task_args("killed.mp4")
    killed = subprocess.run([sys.executable, "-c", KILL_AT, "4", *args], capture_output=True, text=True)
    assert killed.returncode == -9 and not (tmp_path / "killed.mp4").exists()
    assert len(list((tmp_path / ".wancore_resume").glob("*.safetensors"))) == 1
    again = subprocess.run([sys.executable, "-m", "wan_core", *args], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming from step 4 of 6" in again.stderr
    assert torch.equal(load_file(tmp_path / "killed.latent.safetensors")["latent"],
                       load_file(tmp_path / "whole.latent.safetensors")["latent"])
    assert not list((tmp_path / ".wancore_resume").glob("*"))


def test_cli_stop_after_then_continue(tmp_path):
    from safetensors.torch import load_file

    from wan_core.cli import main

    assert main(_cli_args(tmp_path, "whole.mp4", "--resume", "off")) == 0
    assert main(_cli_args(tmp_path, "clip.mp4", "--stop-after", "2")) == 0
    assert (tmp_path / "clip.step-2.mp4").is_file() and not (tmp_path / "clip.mp4").exists()
    assert main(_cli_args(tmp_path, "clip.mp4")) == 0
    assert torch.equal(load_file(tmp_path / "clip.latent.safetensors")["latent"],
                       load_file(tmp_path / "whole.latent.safetensors")["latent"])


def test_manifest_round_trip_and_replay_reproduce_the_latent(tmp_path):
    from safetensors.torch import load_file

    from wan_core.cli import main

    assert main(_cli_args(tmp_path, "first.mp4", "--seed", "11", "--cfg", "4.5")) == 0
    manifest = wan_core.read_manifest(tmp_path / "first.mp4")
    assert (manifest["task"], manifest["seed"], manifest["cfg"], manifest["steps"]) == ("t2v", 11, 4.5, 6)
    dit = manifest["models"]["dit"]
    assert dit["name"] == "wancore_demo_t2v.safetensors" and dit["hash"] == wan_core.fast_file_hash(dit["path"])
    assert main(["replay", str(tmp_path / "first.mp4"), "--models", str(tmp_path / "models")]) == 0
    assert torch.equal(load_file(tmp_path / "first-replay.latent.safetensors")["latent"],
                       load_file(tmp_path / "first.latent.safetensors")["latent"])
    with pytest.raises(wan_core.InputError, match="carries no WanCore run manifest"):
        wan_core.read_manifest(wan_core.write_video(torch.rand(3, 16, 16, 3), tmp_path / "plain.mp4"))


def test_replay_finds_moved_files_by_hash_and_refuses_changed_ones(tmp_path):
    from wan_core.manifest import file_ref, find_file

    original = tmp_path / "a" / "model.safetensors"
    original.parent.mkdir()
    original.write_bytes(bytes(range(256)) * 9000)
    ref = file_ref(original)
    moved = tmp_path / "b" / "renamed.safetensors"
    moved.parent.mkdir()
    original.rename(moved)
    assert find_file(ref, tmp_path / "b") == moved
    moved.write_bytes(bytes(range(256)) * 8999 + bytes(256))  # same size, other content
    with pytest.raises(wan_core.InputError, match=r"model.safetensors \(2304000 bytes, hash .*\) .* was not found"):
        find_file(ref, tmp_path / "b")


def test_an_out_of_memory_decode_falls_back_to_tiles(tmp_path, monkeypatch, caplog):
    vae = wan_core.load_vae(wan_core.demo.write_demo_models(tmp_path)["vae"])
    z = torch.randn(1, 16, 2, 12, 16)
    decode = vae.decode

    def small_only(latent, **kwargs):  # a device whose memory holds a tile but not the whole frame
        if latent.shape[-1] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return decode(latent, **kwargs)

    monkeypatch.setattr(vae, "decode", small_only)
    monkeypatch.setattr(wan_core.models.vae_tiling, "available_bytes", lambda device: 60 * 2**20)
    with caplog.at_level(logging.WARNING):
        got = wan_core.decode_with_fallback(vae, z)
    assert "ran out of memory" in caplog.text and "decoding again in tiles of 8" in caplog.text
    monkeypatch.setattr(vae, "decode", decode)
    torch.testing.assert_close(got, wan_core.decode_tiled(vae, z, 8, 4), rtol=0, atol=0)


def test_resume_with_weight_patches_and_a_changed_patch(tmp_path, caplog):
    model = _model()
    context, negative, _ = _conditioning(T2V)
    delta = 0.05 * torch.randn(256, 256, generator=torch.Generator().manual_seed(4))
    patched = wan_core.RenderContext(patches={"blocks.0.self_attn.q.weight": wan_core.WeightDelta(delta, 0.8)})
    settings = dict(request=REQUEST, seed=7, steps=STEPS, render=patched)
    whole = wan_core.sample(model, context, negative, **settings)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    with pytest.raises(RenderInterrupted):
        wan_core.sample(model, context, negative, **settings, resume=resume, interrupt=_interrupt_at(3))
    other = wan_core.RenderContext(patches={"blocks.0.self_attn.q.weight": wan_core.WeightDelta(delta, 0.5)})
    with caplog.at_level(logging.INFO):
        wan_core.sample(model, context, negative, **{**settings, "render": other}, resume=resume, stop_after=1)
    assert "belongs to another render" in caplog.text  # another strength is another render
    with pytest.raises(RenderInterrupted):
        wan_core.sample(model, context, negative, **settings, resume=resume, interrupt=_interrupt_at(3))
    assert torch.equal(wan_core.sample(model, context, negative, **settings, resume=resume), whole)


def test_a_killed_renders_half_written_checkpoint_is_removed(tmp_path):
    dead = int(open("/proc/sys/kernel/pid_max").read()) + 1  # no process can have this id
    leftover = tmp_path / f".slot.{dead}-0123abcd.partial.safetensors"
    leftover.write_bytes(b"half a checkpoint")
    assert ResumeFile(tmp_path / "slot.safetensors").load("identity", 6) is None
    assert not leftover.exists()
