"""Bad input through the engine, the nodes and the CLI: a clear error naming the value and the fix, raised
before any work (no forward pass, no model moved or loaded), and no file left in the output folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_nodes import env  # noqa: F401  (the standalone host with the demo models)
from tiny import I2V, T2V, CountingRunner, inputs, random_official_state
from workflow_runner import ROOT

import wan_core
from wan_core import InputError, RenderContext, SampleRequest
from wan_core.demo import write_demo_models
from wan_core.loading.safetensors_io import read_header
from wan_core.models.config import detect


def _model(cfg=T2V, seed=1):
    model = wan_core.WanDiT(cfg)
    model.load_state_dict(random_official_state(cfg, seed=seed))
    return model.eval().requires_grad_(False)


SMALL = SampleRequest(80, 64, 5)


@pytest.mark.parametrize(("settings", "message"), [
    ({"seed": -1}, r"seed must be an integer from 0 to 18446744073709551615 \(2\^64 - 1\), got -1"),
    ({"seed": 2**64}, "seed must be an integer from 0 to"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"steps": 0}, "steps must be an integer from 1 to 1000, got 0"),
    ({"steps": 2.0}, "steps must be an integer"),
    ({"cfg": math.nan}, r"cfg must be a finite number at least 0, got nan; 5.0 is the official default"),
    ({"cfg": math.inf}, "cfg must be a finite number"),
    ({"shift": 0.0}, "shift must be a finite number above 0"),
    ({"shift": math.nan}, "shift must be a finite number above 0"),
    ({"denoise": math.nan}, "denoise must be a finite number above 0 and at most 1"),
    ({"sampler": "ddim"}, r"choose one of unipc, dpm\+\+, euler"),
])
def test_bad_settings_fail_before_any_forward(settings, message):
    model, runner = _model(), CountingRunner()
    _, _, context, _, _ = inputs(T2V)
    with pytest.raises(InputError, match=message):
        wan_core.sample(model, context, context, request=SMALL, render=RenderContext(runner=runner), **settings)
    assert runner.blocks_run == 0


def test_the_highest_seed_renders():
    _, _, context, _, _ = inputs(T2V)
    raw = wan_core.sample(_model(), context, None, request=SMALL, seed=2**64 - 1, steps=1, cfg=1.0)
    assert torch.isfinite(raw).all()


def test_what_cannot_fit_is_refused_with_the_estimate_before_allocating(monkeypatch):
    """The check counts the least a memory plan can run with (one CFG branch, the feed-forward in chunks):
    at 832x480x81 on the 1.3B model in fp32 that is ~1.8 GiB, at 480x272x33 ~0.4 GiB."""
    monkeypatch.setattr(wan_core.runtime.memory, "available_bytes", lambda device: 2**30)
    real = wan_core.PRESETS["t2v-1.3B"]
    shape = SampleRequest(832, 480, 81).latent_shape()
    with pytest.raises(InputError, match=r"81-frame 832x480 render \(batch 1\) needs about 1.77 GiB on cpu, but only "
                                         r"1.00 GiB is available; render fewer frames or a smaller size"):
        wan_core.check_render(real, shape, cfg=5.0)
    wan_core.check_render(real, SampleRequest(480, 272, 33).latent_shape(), cfg=5.0)  # smaller: fits
    with pytest.raises(InputError, match=r"needs about \d+\.\d\d GiB"):  # 8192 x 8192 would run for minutes
        wan_core.check_render(real, SampleRequest(8192, 8192, 5).latent_shape())
    with pytest.raises(InputError, match=r"at most 4093 frames"):  # 100001 frames: refused before the noise
        wan_core.check_render(real, SampleRequest(832, 480, 100001).latent_shape())
    monkeypatch.setattr(wan_core.runtime.memory, "available_bytes", lambda device: 2**10)
    runner = CountingRunner()
    _, _, context, _, _ = inputs(T2V)
    with pytest.raises(InputError, match="needs about"):
        wan_core.sample(_model(), context, None, request=SMALL, render=RenderContext(runner=runner))
    assert runner.blocks_run == 0


def test_nan_in_inputs_is_named_before_any_forward():
    model, runner = _model(), CountingRunner()
    render = RenderContext(runner=runner)
    _, _, context, _, _ = inputs(T2V)
    bad = context.clone()
    bad[0, 2, 3] = math.nan
    with pytest.raises(InputError, match="the prompt embedding holds 1 NaN/Inf value"):
        wan_core.sample(model, bad, None, request=SMALL, render=render)
    latent = torch.randn(1, 16, 2, 8, 10)
    latent[0, 0, 0, 0, 0] = math.inf
    with pytest.raises(InputError, match="the start LATENT holds 1 NaN/Inf"):
        wan_core.sample(model, context, None, latent=latent, denoise=0.5, render=render)
    assert runner.blocks_run == 0


def test_nan_in_weights_names_the_tensor_instead_of_a_black_video():
    model = _model()
    with torch.no_grad():
        model.blocks[1].ffn[0].weight[3, 4] = math.nan
    _, _, context, _, _ = inputs(T2V)
    with pytest.raises(wan_core.CheckpointError, match=r"weights hold NaN/Inf \(blocks\.1\.ffn\.0\.weight\)"):
        wan_core.sample(model, context, None, request=SMALL, steps=3, cfg=1.0)


def test_nan_appearing_during_sampling_stops_the_render():
    model = _model()
    _, _, context, _, _ = inputs(T2V)

    def overflowing(x, t, *args, **kwargs):  # a model whose output overflows part-way (t: 999, 937, 833, 624)
        out = model(x, t, *args, **kwargs)
        return out * (math.inf if t[0] < 900 else 1.0)

    with pytest.raises(wan_core.RenderError, match=r"NaN/Inf values at step 3 of 4 with valid inputs and weights; "
                                                   r"use bf16 or fp32"):
        wan_core.sample(overflowing, context, None, request=SMALL, steps=4, cfg=1.0)


def test_latent_and_conditioning_shapes_against_each_other():
    model = _model(I2V)
    _, _, context, clip_fea, y = inputs(I2V, frames=2, h=8, w=10)
    with pytest.raises(InputError, match=r"built for 5 frames at 80x64, the LATENT is 9 frames at 80x64"):
        wan_core.sample(model, context, None, latent=torch.randn(1, 16, 3, 8, 10), clip_fea=clip_fea, y=y, steps=1)
    with pytest.raises(InputError, match=r"every size at least 1, got \(1, 16, 0, 8, 10\)"):
        wan_core.sample(model, context, None, latent=torch.zeros(1, 16, 0, 8, 10), clip_fea=clip_fea, y=y, steps=1)
    # one image conditioning for a batch of start latents is broadcast, as one prompt is
    raw = wan_core.sample(model, context, None, latent=torch.randn(2, 16, 2, 8, 10), clip_fea=clip_fea, y=y,
                          steps=1, cfg=1.0)
    assert raw.shape == (2, 16, 2, 8, 10)


def test_known_widths_need_their_block_count():
    shapes = {k: v.shape for k, v in wan_core.WanDiT(T2V).state_dict().items()}
    width, ffn = 1536, 8960
    real = {}
    for key, shape in shapes.items():
        real[key] = tuple(width if s == T2V.dim else ffn if s == T2V.ffn_dim else s for s in shape)
    real["head.modulation"] = (1, 2, width)
    with pytest.raises(wan_core.CheckpointError, match="a Wan DiT of width 1536 has 30 transformer blocks, this "
                                                       "file has 2; it is incomplete"):
        detect(real)
    assert detect(shapes).num_layers == 2  # tiny and custom widths stay allowed


@pytest.mark.parametrize(("header", "message"), [
    ([1, 2], "the safetensors header is a list"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "it needs dtype, shape and data_offsets"),
    ({"w": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}}, r"shape \[2, -1\]"),
    ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, "shape '2'"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, r"data_offsets \[8, 0\]"),
    ({"w": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}, "unsupported dtype 5"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "tensors 'a' and 'b' overlap"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"x": 1}}, "metadata"),
])
def test_damaged_safetensors_headers_are_checkpoint_errors(tmp_path, header, message):
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(16))
    with pytest.raises(wan_core.CheckpointError, match=message):
        read_header(path)


def test_prompt_with_a_lone_surrogate_is_named(tmp_path):
    encoder = wan_core.load_text_encoder(write_demo_models(tmp_path)["text_encoders"])
    with pytest.raises(InputError, match=r"prompt 0 has a character that is not valid text at position 4"):
        encoder.encode(["fox \ud800 in snow"])


def test_output_names_and_frame_rates_that_cannot_be_written(tmp_path):
    frames = torch.rand(3, 16, 16, 3)
    with pytest.raises(InputError, match="contains a NUL character"):
        wan_core.write_video(frames, tmp_path / "a\0b.mp4")
    with pytest.raises(InputError, match=r"too long for this file system \(\d+ of at most 255 bytes"):
        wan_core.write_video(frames, tmp_path / ("x" * 240 + ".mp4"))
    with pytest.raises(InputError, match="filename prefix .* without NUL"):
        wan_core.next_output_path(tmp_path, "wan/\0clip", ".mp4")
    with pytest.raises(InputError, match="a GIF cannot play 100 fps.*use at most 50 fps"):
        wan_core.write_video(frames, tmp_path / "x.gif", fmt="gif", fps=100)
    with pytest.raises(InputError, match="fps must be a finite positive number, got nan"):
        wan_core.write_video(frames, tmp_path / "x.mp4", fps=math.nan)
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_video_says_it_lost_frames(tmp_path):
    import av
    import numpy as np

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(40):
            noise = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")))
        container.mux(stream.encode(None))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"declares 40 frames but only \d+ could be decoded"):
        wan_core.read_video(path)


def test_example_workflows_carry_no_placeholder_values():
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == "WanCoreTextEncoderLoader":
                assert node["widgets_values"][2] == "", (path.name, node["widgets_values"])
            values = node["widgets_values"]
            fixed = [i for i, v in enumerate(values) if v == "fixed"]
            seeded = ("WanCoreSampler", "WanCoreExtend")  # control-after-generate follows their seed, widget 4
            assert all(node["type"] in seeded and i == 4 for i in fixed), (path.name, node["type"])


def test_damaged_text_encoder_and_clip_weights_are_named(tmp_path):
    paths = write_demo_models(tmp_path)
    encoder = wan_core.load_text_encoder(paths["text_encoders"])
    with torch.no_grad():
        encoder.model.encoder.block[1].layer[1].DenseReluDense.wo.weight[0, :] = math.inf
    with pytest.raises(wan_core.CheckpointError, match=r"text encoder's weights hold NaN/Inf \(encoder\.block\.1\.layer"
                                                       r"\.1\.DenseReluDense\.wo\.weight\)"):
        encoder.encode(["a fox"])
    clip = wan_core.load_clip_vision(paths["clip_vision"])
    with pytest.raises(InputError, match="the image holds 1 NaN/Inf value"):
        clip.encode(torch.rand(1, 32, 32, 3).index_put_((torch.tensor(0),) * 4, torch.tensor(math.nan)))
    with torch.no_grad():
        clip.vision_model.encoder.layers[0].mlp.fc1.bias[:] = math.nan
    with pytest.raises(wan_core.CheckpointError, match=r"CLIP vision encoder's weights .*layers\.0\.mlp\.fc1\.bias"):
        clip.encode(torch.rand(1, 32, 32, 3))
