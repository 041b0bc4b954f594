"""Bad input, interrupts and crashes through the nodes and the command line: errors before any model moves or
loads, cancels honoured in every long stage, and no file (or partial file) left behind."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch
from test_nodes import SMALL, _t2v_graph, env  # noqa: F401  (the standalone host with the demo models)
from workflow_runner import load_pack

import wan_core
from wan_core.cli import main
from wan_core.demo import DEMO_FILES

SETTINGS = {**SMALL, "seed": 1, "cfg": 5.0, "shift": 5.0, "sampler": "unipc", "denoise": 1.0}


@contextmanager
def _nothing_moved(monkeypatch):
    """Records every model the nodes move to the compute device."""
    host = load_pack().nodes.host
    moved = []
    original = host.on_compute_device

    def recording(*models):
        moved.extend(models)
        return original(*models)

    monkeypatch.setattr(host, "on_compute_device", recording)
    yield moved


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": 2**64}, "seed must be an integer from 0 to"),
    ({"cfg": math.nan}, "cfg must be a finite number at least 0, got nan"),
    ({"shift": math.inf}, "shift must be a finite number above 0, got inf"),
    ({"steps": 0}, "steps must be an integer from 1 to 1000"),
])
def test_sampler_node_refuses_before_moving_the_model(env, monkeypatch, change, message):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    pack = load_pack()
    with _nothing_moved(monkeypatch) as moved, pytest.raises(pack.wan_core.InputError, match=message):
        nodes["WanCoreSampler"]().run(model, embeds, **{**SETTINGS, **change})
    assert moved == []


def test_sampler_node_refuses_a_latent_that_does_not_match_the_image_conditioning(env, monkeypatch):  # noqa: F811
    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    model = nodes["WanCoreModelLoader"]().load(wan_core.demo.DEMO_IMAGE_FILES["i2v"][1], "default")[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
    clip = nodes["WanCoreCLIPVisionLoader"]().load(wan_core.demo.DEMO_IMAGE_FILES["clip_vision"][1])[0]
    vae = nodes["WanCoreVAELoader"]().load(DEMO_FILES["vae"], "default")[0]
    image_embeds = nodes["WanCoreImageToVideo"]().build(vae, torch.rand(1, 48, 64, 3), 64, 48, 5, False,
                                                        clip_vision=clip)[0]
    latent = {"samples": torch.randn(1, 16, 3, 6, 8)}  # 9 frames; the conditioning is for 5
    with _nothing_moved(monkeypatch) as moved, pytest.raises(pack.wan_core.InputError, match="built for 5 frames"):
        nodes["WanCoreSampler"]().run(model, embeds, **SETTINGS, latent=latent, image_embeds=image_embeds)
    assert moved == []


def test_nan_latent_in_the_decode_node_is_named_and_nothing_is_written(env):  # noqa: F811
    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    vae = nodes["WanCoreVAELoader"]().load(DEMO_FILES["vae"], "default")[0]
    z = torch.randn(1, 16, 2, 6, 8)
    z[0, 3, 1] = math.nan
    with pytest.raises(pack.wan_core.InputError, match="the LATENT holds 48 NaN/Inf value"):
        nodes["WanCoreVAEDecode"]().decode(vae, {"samples": z}, "off")
    assert not (env / "output").exists() or not any((env / "output").rglob("*"))


def _interrupt_after(monkeypatch, calls: int):
    host = load_pack().nodes.host
    asked = []
    monkeypatch.setattr(host, "interrupt_requested", lambda: asked.append(1) or len(asked) > calls)
    return asked


@pytest.mark.parametrize("stage", ["decode", "decode_tiled", "encode", "text"])
def test_long_stages_stop_on_a_cancel_and_put_the_model_back(env, monkeypatch, stage):  # noqa: F811
    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    vae = nodes["WanCoreVAELoader"]().load(DEMO_FILES["vae"], "default")[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
    asked = _interrupt_after(monkeypatch, 1)
    with pytest.raises(pack.wan_core.RenderInterrupted):
        if stage == "decode":
            nodes["WanCoreVAEDecode"]().decode(vae, {"samples": torch.randn(1, 16, 3, 6, 8)}, "off")
        elif stage == "decode_tiled":
            nodes["WanCoreVAEDecode"]().decode(vae, {"samples": torch.randn(1, 16, 3, 12, 16)}, "256")
        elif stage == "encode":
            nodes["WanCoreVAEEncode"]().encode(vae, torch.rand(9, 48, 64, 3), "off")
        else:
            nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")
    assert len(asked) == 2  # stopped at the second check, not at the end
    host = pack.nodes.host
    assert vae.conv2.weight.device == host.offload_device() and encoder.device == host.offload_device()
    monkeypatch.setattr(host, "interrupt_requested", lambda: False)
    assert nodes["WanCoreVAEDecode"]().decode(vae, {"samples": torch.randn(1, 16, 1, 6, 8)}, "off")[0].shape[0] == 1


def test_writer_node_stops_between_frames_and_keeps_nothing(env, monkeypatch):  # noqa: F811
    pack = load_pack()
    _interrupt_after(monkeypatch, 3)
    writer = pack.NODE_CLASS_MAPPINGS["WanCoreVideoWriter"]()
    with pytest.raises(pack.wan_core.RenderInterrupted, match="at frame 4 of 17"):
        writer.write(torch.rand(17, 48, 64, 3), 16.0, "cancelled/clip", "mp4", -1, False)
    assert list((env / "output" / "cancelled").iterdir()) == []


def test_a_standalone_cancel_does_not_stop_the_next_render(env):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    host = load_pack().nodes.host
    host.interrupt_event.set()  # left over from an earlier, cancelled render
    out = nodes["WanCoreSampler"]().run(model, embeds, **{**SETTINGS, "steps": 2})[0]
    assert out["samples"].shape == (1, 16, 2, 6, 8) and not host.interrupt_event.is_set()


def test_inputs_by_name_never_leave_their_folder(env):  # noqa: F811
    pack = load_pack()
    host = pack.nodes.host
    outside = env / "outside.mp4"
    wan_core.write_video(torch.rand(5, 16, 16, 3), outside)
    with pytest.raises(host.HostError, match=r"input file '\.\./outside\.mp4' leads outside its folder"):
        pack.NODE_CLASS_MAPPINGS["WanCoreLoadVideo"]().load("../outside.mp4", 0, 5, 1, 0, 0)
    with pytest.raises(host.HostError, match="model file .* leads outside its folder"):
        host.model_path("vae", "../diffusion_models/" + DEMO_FILES["diffusion_models"])
    with pytest.raises(host.HostError, match="leads outside its folder"):
        host.input_path(str(outside))  # an absolute name
    (env / "input" / "link.mp4").symlink_to(outside)  # a link the user placed (e.g. to another disk) is followed
    assert pack.NODE_CLASS_MAPPINGS["WanCoreLoadVideo"]().load("link.mp4", 0, 5, 1, 0, 0)[2] == 5


WRITER = """
import sys, torch, wan_core
def frames():
    for i in range(100000):
        if i == 3:
            print("writing", flush=True)
        yield torch.rand(64, 64, 3)
class Frames:
    shape = (100000, 64, 64, 3)
    def __iter__(self):
        return frames()
wan_core.write_video(Frames(), sys.argv[1], fmt="png")
"""


def test_a_killed_writers_partial_file_is_removed_by_the_next_write(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "clip")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    partial = [p for p in tmp_path.iterdir() if ".partial" in p.name]
    assert len(partial) == 1 and str(proc.pid) in partial[0].name  # what a SIGKILL leaves
    written = wan_core.write_video(torch.rand(5, 16, 16, 3), tmp_path / "next.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == [written.name]


def _cli(tmp_path, *args):
    models = tmp_path / "models"
    return ["--models", str(models), "--prompt", "a fox", "--out", str(tmp_path / "out" / "o.mp4"), *args]


@pytest.fixture
def loads(monkeypatch):
    """Counts the CLI's model loads (it must check everything before the first)."""
    count = []
    for name in ("load_dit", "load_text_encoder", "load_vae", "load_clip_vision"):
        original = getattr(wan_core, name)
        monkeypatch.setattr(wan_core, name, lambda *a, _f=original, **k: count.append(1) or _f(*a, **k))
    return count


@pytest.mark.parametrize(("args", "message"), [
    (["t2v", "--demo", "--fps", "0"], "fps must be a finite positive number, got 0.0"),
    (["t2v", "--demo", "--steps", "0"], "steps must be an integer from 1 to 1000"),
    (["t2v", "--demo", "--seed", "-5"], "seed must be an integer from 0"),
    (["t2v", "--demo", "--cfg", "nan"], "cfg must be a finite number"),
    (["t2v", "--demo", "--out", "x.gif", "--fps", "100"], "a GIF cannot play 100 fps"),
    (["t2v", "--demo", "--device", "cuda"], "--device cuda was given but this machine has no usable CUDA"),
    (["i2v", "--demo", "--image", "missing.png"], "image file missing.png does not exist"),
    (["i2v", "--demo", "--image", "NOT_AN_IMAGE"], "is not a readable image; use a png, jpg or webp file"),
    (["i2v", "--demo", "--dit", "t2v", "--image", "IMAGE"],
     "this is a t2v model, which takes a prompt; an i2v render needs one start image"),
    (["t2v", "--demo", "--frames", "100001"], "at most 4093 frames"),
])
def test_cli_refuses_before_loading_any_model(tmp_path, capsys, loads, monkeypatch, args, message):
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("this machine has CUDA")
    image = wan_core.write_video(torch.rand(1, 48, 64, 3), tmp_path / "img", fmt="png") / "frame_00000.png"
    (tmp_path / "not_an_image.png").write_text("hello")
    args = [{"IMAGE": str(image), "NOT_AN_IMAGE": str(tmp_path / "not_an_image.png")}.get(a, a) for a in args]
    if "--dit" in args:  # a t2v DiT used for i2v: point the demo's i2v slot at the t2v file
        args.remove("--dit"), args.remove("t2v")
        t2v_file = ("diffusion_models", DEMO_FILES["diffusion_models"])
        monkeypatch.setattr(wan_core.demo, "DEMO_IMAGE_FILES", {**wan_core.demo.DEMO_IMAGE_FILES, "i2v": t2v_file})
    if args[-1].endswith(".gif") or "--out" in args:
        out = args.index("--out")
        args[out + 1] = str(tmp_path / "out" / args[out + 1])
        cli_args = [*args[:1], "--models", str(tmp_path / "models"), "--prompt", "x", *args[1:]]
    else:
        cli_args = [args[0], *_cli(tmp_path, *args[1:])]
    assert main(cli_args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert loads == []
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_cli_image_task_without_a_clip_vision_file_names_the_fix(tmp_path, capsys):
    """A Wan2.1 i2v DiT (it has a CLIP branch) and no clip_vision file; Wan2.2's experts need none (test_wan22_dit)."""
    import shutil

    models = tmp_path / "models"
    for kind in ("diffusion_models", "text_encoders", "vae"):
        (models / kind).mkdir(parents=True)
        (models / kind / "model.safetensors").write_bytes(b"")
    i2v = wan_core.demo.write_demo_models(tmp_path / "demo")["i2v"]
    shutil.copy(i2v, models / "diffusion_models" / "model.safetensors")
    code = main(["i2v", "--models", str(models), "--prompt", "x", "--image", "x.png", "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "pick the clip_vision file with --clip-vision" in err, err


def test_cli_treats_sigterm_like_ctrl_c(tmp_path):
    script = ("import os, signal, sys, wan_core.cli as cli\n"
              "def run(argv):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
              "cli.run = run\nsys.exit(cli.main([]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 130 and "interrupted; nothing was written" in result.stderr


def test_sampler_node_refuses_what_cannot_fit_before_moving_the_model(env, monkeypatch):  # noqa: F811
    nodes, model, _, embeds = _t2v_graph(env)
    pack = load_pack()
    monkeypatch.setattr(pack.wan_core.runtime.memory, "available_bytes", lambda device: 2**10)
    monkeypatch.setattr(pack.nodes.host, "available_bytes", lambda device: 2**10)  # what the host has, freed or not
    with _nothing_moved(monkeypatch) as moved, pytest.raises(pack.wan_core.InputError,
                                                             match=r"needs about .* on .*render fewer frames"):
        nodes["WanCoreSampler"]().run(model, embeds, **SETTINGS)
    assert moved == []
