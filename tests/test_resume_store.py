"""Resume files keyed by the render's identity, kept bounded, and checkpoints that cannot be written
(issue 22, items 7 and 4): through the sampler node, which every example workflow gives the same node id."""

from __future__ import annotations

import errno
import logging
import os
import time

import pytest
import torch
from test_nodes import SMALL, _t2v_graph, env  # noqa: F401  (the standalone host with the demo models)
from workflow_runner import load_pack

from wan_core.sampling.resume import KEEP_DAYS, ResumeStore

SETTINGS = {**SMALL, "steps": 5, "cfg": 5.0, "shift": 5.0, "sampler": "unipc", "denoise": 1.0}


def _cancel_after(monkeypatch, host, steps: int) -> None:
    calls = []
    monkeypatch.setattr(host, "interrupt_requested", lambda: calls.append(1) or len(calls) >= steps)


def _files(host) -> list:
    return sorted(host.resume_folder().glob("*.safetensors"))


def test_two_renders_cancelled_in_turn_through_one_node_both_resume(env, monkeypatch, caplog):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    host, sampler = load_pack().nodes.host, nodes["WanCoreSampler"]()
    renders = {"a": {**SETTINGS, "seed": 1}, "b": {**SETTINGS, "seed": 2, "cfg": 3.0}}
    whole = {k: sampler.run(model, embeds, **s, resume="off")[0]["samples"] for k, s in renders.items()}
    for steps, settings in zip((2, 3), renders.values()):  # a is cancelled after 2 steps, then b after 3
        _cancel_after(monkeypatch, host, steps)
        with pytest.raises(load_pack().wan_core.RenderInterrupted):
            sampler.run(model, embeds, **settings)
    assert len(_files(host)) == 2  # b's render did not take a's file
    monkeypatch.setattr(host, "interrupt_requested", lambda: False)
    for (name, settings), steps in zip(renders.items(), (2, 3)):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            again = sampler.run(model, embeds, **settings)[0]["samples"]
        assert f"resuming from step {steps} of 5" in caplog.text and torch.equal(again, whole[name])
        assert len(_files(host)) == (1 if name == "a" else 0)  # a finished render removes only its own


def test_a_store_keeps_the_newest_files_and_none_too_old(tmp_path):
    store = ResumeStore(tmp_path, keep=4)
    now = time.time()
    ages = {"old": KEEP_DAYS * 86400 + 60, **{f"recent{i}": 60.0 * (i + 1) for i in range(5)}}
    for name, age in ages.items():
        (tmp_path / f"{name}.safetensors").write_bytes(b"x")
        os.utime(tmp_path / f"{name}.safetensors", (now - age, now - age))
    (tmp_path / "notes.txt").write_text("not ours")
    current = store.file_for("f" * 64)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["notes.txt", "recent0.safetensors", "recent1.safetensors", "recent2.safetensors"]
    assert current.path == tmp_path / f"{'f' * 32}.safetensors"  # with it, at most 4 files


def test_a_checkpoint_that_cannot_be_written_is_a_warning_and_the_render_finishes(env, monkeypatch, caplog):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    host, sampler = load_pack().nodes.host, nodes["WanCoreSampler"]()
    settings = {**SETTINGS, "seed": 4}
    whole = sampler.run(model, embeds, **settings, resume="off")[0]["samples"]
    resume = load_pack().wan_core.sampling.resume
    tries = []

    def disk_full(tensors, path, metadata=None):
        tries.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(resume, "save_file", disk_full)
    with caplog.at_level(logging.WARNING):
        out = sampler.run(model, embeds, **settings)[0]["samples"]
    assert torch.equal(out, whole) and len(tries) == 1  # the first failure ends the checkpoints
    assert f"the resume checkpoint {host.resume_folder()}/" in caplog.text and "could not be written" in caplog.text
    assert "No space left on device" in caplog.text and not list(host.resume_folder().glob("*"))


def test_a_resume_folder_that_cannot_be_made_is_a_warning_and_the_render_finishes(env, monkeypatch, caplog):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    host, sampler = load_pack().nodes.host, nodes["WanCoreSampler"]()
    settings = {**SETTINGS, "seed": 5}
    whole = sampler.run(model, embeds, **settings, resume="off")[0]["samples"]
    blocker = env / "blocked" / "wancore_resume"
    blocker.parent.mkdir()
    blocker.write_text("a file where the folder should be")
    monkeypatch.setattr(host, "resume_folder", lambda: blocker)
    with caplog.at_level(logging.WARNING):
        out = sampler.run(model, embeds, **settings)[0]["samples"]
    assert torch.equal(out, whole) and blocker.read_text() == "a file where the folder should be"
    assert f"the resume checkpoint {blocker}/" in caplog.text


def test_the_cli_refuses_an_output_folder_it_cannot_write_before_any_work(tmp_path, capsys):
    from wan_core.cli import main

    (tmp_path / "taken").write_text("a file where the folder should be")
    out = tmp_path / "taken" / "clip.mp4"
    code = main(["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "x", "--out", str(out),
                 "--width", "64", "--height", "48", "--frames", "5", "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and f"the output folder {tmp_path / 'taken'} cannot be written" in err
    assert "Traceback" not in err and not (tmp_path / "models").exists()  # before the demo models were written


def test_the_writer_node_names_the_folder_and_the_file_it_cannot_write(env, monkeypatch):  # noqa: F811
    nodes = load_pack().NODE_CLASS_MAPPINGS
    pack = load_pack().wan_core
    frames = torch.rand(5, 48, 64, 3)
    args = dict(fps=16.0, format="mp4", quality=-1, save_metadata=False)
    (env / "output").mkdir(exist_ok=True)
    (env / "output" / "taken").write_text("a file where the folder should be")
    with pytest.raises(pack.OutputError, match=f"the output folder {env / 'output' / 'taken'} cannot be written"):
        nodes["WanCoreVideoWriter"]().write(frames, filename_prefix="taken/clip", **args)
    writer = load_pack().wan_core.video.writer

    def disk_full(frames, temp, *rest):
        for _ in frames:
            temp.write_bytes(b"half a video")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write_container", disk_full)
    before = set((env / "output").rglob("*"))
    with pytest.raises(pack.OutputError, match=r"clip_00001\.mp4 could not be written \(No space left on device\)"):
        nodes["WanCoreVideoWriter"]().write(frames, filename_prefix="full/clip", **args)
    assert set((env / "output").rglob("*")) - before == {env / "output" / "full"}  # no half-written file
