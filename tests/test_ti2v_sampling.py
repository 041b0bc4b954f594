"""TI2V-5B renders: text-to-video with 48-channel latents, and image-to-video exactly as the official
``wan/textimage2video.py`` prepares and runs it (the image's latent as the first latent frame, its tokens at
timestep 0, re-imposed after every step), composed here from the official pieces on tiny weights: the latent the
model sees at every step and the final latent are compared."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_ti2v_dit import TI2V, _official
from tiny import TEXT_DIM
from wan_reference import wan_module

import wan_core
from wan_core import SampleRequest

SEED, CFG, SHIFT, STEPS = 11, 5.0, 5.0, 5
FRAMES, HEIGHT, WIDTH = 9, 64, 96  # latent [48, 3, 4, 6]: 3 frames of 2 x 3 tokens


def _official_i2v_loop(model, z, context, negative, record):
    """The official TI2V image-to-video loop: noise, the image latent ``z [48, 1, h, w]`` (normalized) blended in
    by the zero-first-frame mask, per-token timesteps (0 on the first frame), CFG, re-imposed after each step."""
    mod = wan_module("utils.fm_solvers_unipc")
    scheduler = mod.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    scheduler.set_timesteps(STEPS, shift=SHIFT)
    generator = torch.Generator("cpu").manual_seed(SEED)
    noise = torch.randn(48, (FRAMES - 1) // 4 + 1, HEIGHT // 16, WIDTH // 16, dtype=torch.float32, generator=generator)
    mask = torch.ones_like(noise)
    mask[:, 0] = 0  # masks_like(..., zero=True)'s second mask
    seq_len = noise.shape[1] * noise.shape[2] * noise.shape[3] // 4
    latent = (1.0 - mask) * z + mask * noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            record.append(latent.clone())
            timestep = (mask[0][:, ::2, ::2] * t).flatten()[None]
            cond = model([latent], t=timestep, context=[context], seq_len=seq_len)[0]
            uncond = model([latent], t=timestep, context=[negative], seq_len=seq_len)[0]
            pred = uncond + CFG * (cond - uncond)
            latent = scheduler.step(pred.unsqueeze(0), t, latent.unsqueeze(0), return_dict=False)[0].squeeze(0)
            latent = (1.0 - mask) * z + mask * latent
    return latent


class _Inputs:
    """Wraps our DiT, recording the latent it is given at each call (the first of a CFG batch)."""

    def __init__(self, model, record):
        self.model, self.record, self.config = model, record, model.config

    def __call__(self, x, t, *args, **kwargs):
        self.record.append(x[0].clone())
        return self.model(x, t, *args, **kwargs)

    def check_conditioning(self, *args, **kwargs):
        self.model.check_conditioning(*args, **kwargs)


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    ref = _official(TI2V, seed=7)
    path = tmp_path_factory.mktemp("ti2v") / "ti2v.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    return ref, wan_core.load_dit(path)


def _prompts():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(1, 6, TEXT_DIM, generator=gen), torch.randn(1, 9, TEXT_DIM, generator=gen)


def test_ti2v_image_to_video_equals_the_official_loop(dit):
    ref, ours = dit
    context, negative = _prompts()
    raw_image = torch.randn(1, 48, 1, HEIGHT // 16, WIDTH // 16, generator=torch.Generator().manual_seed(2))
    z = wan_core.normalize_latents(raw_image)[0]  # the official encode hands out normalized latents
    official_inputs, our_inputs = [], []
    expected = _official_i2v_loop(ref, z, context[0], negative[0], official_inputs)
    raw = wan_core.sample(_Inputs(ours, our_inputs), context, negative, request=SampleRequest(WIDTH, HEIGHT, FRAMES),
                          seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT, first_frame=raw_image)
    got = wan_core.normalize_latents(raw)[0]
    assert len(our_inputs) == STEPS
    for step, (a, b) in enumerate(zip(our_inputs, official_inputs)):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5, step
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5
    assert torch.allclose(raw[:, :, :1], raw_image, atol=1e-5)  # the image's frame is the image's latent


def test_ti2v_text_to_video_renders_48_channel_latents_at_16x(dit):
    _, ours = dit
    context, negative = _prompts()
    raw = wan_core.sample(ours, context, negative, request=SampleRequest(WIDTH, HEIGHT, FRAMES), seed=SEED, steps=2)
    assert raw.shape == (1, 48, 3, HEIGHT // 16, WIDTH // 16) and torch.isfinite(raw).all()
    with pytest.raises(wan_core.InputError, match="multiple of 32"):
        wan_core.sample(ours, context, negative, request=SampleRequest(80, HEIGHT, FRAMES), steps=2)
    t2v = wan_core.WanDiT(wan_core.DiTConfig("t2v", dim=256, ffn_dim=384, num_layers=2, text_dim=TEXT_DIM))
    with pytest.raises(wan_core.InputError, match="first_frame.*TI2V"):
        wan_core.sample(t2v, context, negative, request=SampleRequest(64, 64, 5), steps=2,
                        first_frame=torch.zeros(1, 48, 1, 4, 4))


def test_the_task_functions_render_ti2v_text_and_image_to_video(dit, tmp_path):
    """text_to_video and image_to_video with the 5B and the Wan2.2 VAE: 24 frames a second apart, the image's latent
    as the first latent frame (encoded from the image covering the size, center-cropped), decoded at 16x, whole
    and in tiles alike."""
    from safetensors.torch import save_file as save

    from wan_core.demo import write_demo_models
    from wan_core.models.vae22 import VAE22Config, WanVAE22

    _, ours = dit
    encoder = wan_core.load_text_encoder(write_demo_models(tmp_path)["text_encoders"])
    with torch.no_grad():
        vae = WanVAE22(VAE22Config(base_dim=8, decoder_dim=12, z_dim=48))
        gen = torch.Generator().manual_seed(3)
        for p in vae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5 if p.dim() > 1 else 1))
    save(vae.state_dict(), tmp_path / "vae22.safetensors")
    vae = wan_core.load_vae(tmp_path / "vae22.safetensors")
    size = dict(width=WIDTH, height=HEIGHT, frames=FRAMES, steps=2, seed=3)
    video = wan_core.text_to_video(ours, encoder, vae, "a fox", **size)
    assert video.shape == (1, 3, FRAMES, HEIGHT, WIDTH)
    image = torch.rand(1, 80, 100, 3, generator=torch.Generator().manual_seed(4))
    raw = wan_core.image_to_latent(ours, encoder, vae, None, image, "a fox", **size)
    from wan_core.i2v import _cover_crop, _to_model_frame

    first = vae.encode(_to_model_frame(_cover_crop(image, HEIGHT, WIDTH), HEIGHT, WIDTH).unsqueeze(2))
    assert torch.allclose(raw[:, :, :1], first, atol=1e-5)
    whole = vae.decode(raw)
    tiled = wan_core.decode_tiled(vae, raw, tile=4, overlap=2)
    assert tiled.shape == whole.shape == (1, 3, FRAMES, HEIGHT, WIDTH)
    assert (tiled - whole).abs().mean() < 0.05  # tiles blend at their seams, as for the Wan2.1 VAE


@pytest.mark.parametrize("height, width, area", [(480, 832, 1280 * 704), (1080, 1920, 1280 * 704),
                                                 (900, 600, 704 * 1280), (512, 512, 640 * 352)])
def test_the_ti2v_size_rule_is_the_official_one(height, width, area, monkeypatch):
    import sys
    import types

    for name in ("imageio", "torchvision"):  # imported at the top of wan/utils/utils.py, unused by the size rule
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    official = wan_module("utils.utils").best_output_size(width, height, 32, 32, area)
    assert wan_core.ti2v_size(height, width, area) == (official[1], official[0])


@pytest.mark.parametrize("image", [False, True], ids=["text", "image"])
def test_the_cli_renders_ti2v_on_the_demo_models(tmp_path, image):
    from wan_core.cli import main
    from wan_core.demo import DEMO_SIZE
    from wan_core.video import write_video

    args = ["ti2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "2",
            "--frames", "9", "--out", str(tmp_path / "out.mp4")]
    if image:
        frame = write_video(torch.rand(1, 90, 140, 3), tmp_path / "img", fmt="png") / "frame_00000.png"
        args += ["--image", str(frame)]
    assert main(args) == 0
    manifest = wan_core.read_manifest(tmp_path / "out.mp4")
    assert manifest["task"] == "ti2v" and manifest["fps"] == 24.0 and (manifest["width"], manifest["height"]) == (
        DEMO_SIZE["width"], DEMO_SIZE["height"])
    assert manifest["models"]["vae"]["name"] == "wancore_demo_wan22_vae.safetensors"
