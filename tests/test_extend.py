"""Extension in latent space: the segments a length takes (worked by hand), the first segment kept bit for bit, the
requested length, each model kind conditioned on the carried frames (t2v held, i2v through y, VACE through its
context), a prompt per segment, and bad settings refused before any step."""

from __future__ import annotations

import pytest
import torch
from test_resume import _model
from test_vace_dit import VACE
from tiny import I2V, T2V, TEXT_DIM, random_official_state

import wan_core
from wan_core import Extension, InputError, RenderSettings, StandaloneHost, TextEmbeds, extend
from wan_core.extend import image_segment, vace_segment

SETTINGS = RenderSettings(steps=3, seed=4, cfg=5.0, resume="off")


def _embeds(seed=5):
    gen = torch.Generator().manual_seed(seed)
    return TextEmbeds(torch.randn(1, 6, TEXT_DIM, generator=gen), torch.randn(1, 9, TEXT_DIM, generator=gen))


def _render(model, frames=21, **job):
    return wan_core.RenderJob(model, _embeds(), SETTINGS, wan_core.SampleRequest(80, 64, frames), **job).run(
        StandaloneHost("cpu"))


class _Calls:
    """Records what each DiT call sees (frames of x, the context's first value, y and the VACE context)."""

    def __init__(self, monkeypatch):
        self.calls, forward = [], wan_core.WanDiT.forward

        def spy(model, x, t, context, **kw):
            self.calls.append({"x": x.shape[2], "context": float(context[0, 0, 0]), "y": kw.get("y"),
                               "vace": kw.get("vace_context")})
            return forward(model, x, t, context, **kw)

        monkeypatch.setattr(wan_core.WanDiT, "forward", spy)


def test_segments_follow_from_the_lengths():
    """81-frame segments (21 latent) carrying 16 frames (4 latent) add 17 latent frames each: 81 -> 241 frames
    (21 -> 61 latent) takes 21 + 17 = 38, + 17 = 55, then 6 more: segments of 21, 21 and 4 + 6 = 10."""
    assert Extension(241).segments(21) == [21, 21, 10]
    assert Extension(81).segments(21) == []  # as long already
    # 41-frame segments (11 latent) carrying 4 frames (1): 10 new each; 337 frames = 85 latent: 6 x 10, then 4
    assert Extension(337, overlap=4, segment=41).segments(21) == [11] * 6 + [1 + 4]
    with pytest.raises(InputError, match="more than the 41 to extend to; set frames to at least 81"):
        Extension(41).segments(21)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"frames": 240}, "frames must be 4n\\+1 frames, got 240; use 237 or 241"),
    ({"frames": 241, "overlap": 10}, "overlap must be a multiple of 4 frames"),
    ({"frames": 241, "overlap": 84}, "below the segment's 80, got 84"),
    ({"frames": 241, "segment": 80}, "segment must be 4n\\+1"),
])
def test_bad_extension_settings_name_the_value_and_the_fix(kwargs, message):
    with pytest.raises(InputError, match=message):
        Extension(**kwargs)


def test_a_t2v_extension_keeps_the_clip_and_holds_the_carried_frames(monkeypatch):
    """A 21-frame clip (6 latent) extended to 45 frames (12 latent) by 25-frame segments (7 latent) carrying 8
    frames (2 latent): segments of 7 (5 new) and 3 (1 new). The clip's frames are unchanged bit for bit; each
    segment ends on the frames it carried (held fixed, noised to each step's level); prompts travel per segment."""
    model = _model(T2V)
    clip = _render(model)
    calls = _Calls(monkeypatch)
    segments = []
    prompts = [_embeds(8), _embeds(9)]
    out = extend(model, prompts, clip, Extension(45, overlap=8, segment=25), SETTINGS, StandaloneHost("cpu"),
                 on_segment=lambda n, count, joined: segments.append((n, count, joined.shape[2])))
    assert out.shape == (1, 16, 12, 8, 10) and torch.equal(out[:, :, :6], clip)
    assert segments == [(1, 2, 11), (2, 2, 12)]
    assert [c["x"] for c in calls.calls] == [7] * 3 + [3] * 3  # CFG batched: one call a step
    firsts = [prompts[0].positive[0, 0, 0], prompts[1].positive[0, 0, 0]]
    assert [c["context"] for c in calls.calls] == [float(firsts[0])] * 3 + [float(firsts[1])] * 3
    segment = wan_core.RenderJob(model, prompts[1], wan_core.RenderSettings(steps=3, seed=6, cfg=5.0, resume="off"),
                                 wan_core.SampleRequest(80, 64, 9), fixed=out[:, :, 9:11]).run(StandaloneHost("cpu"))
    assert torch.equal(segment[:, :, 2:], out[:, :, 11:])  # the last segment is that render's new frame
    assert torch.allclose(segment[:, :, :2], out[:, :, 9:11], atol=1e-5)  # which ends on the carried frames


def test_an_i2v_extension_conditions_on_the_carried_frames_through_y(monkeypatch):
    """i2v: the segment's y holds mask 1 over the 2 carried frames and their normalized latents, then the clip's
    blank-frame latents (its own y's last frame) with mask 0; the clip's CLIP features stay."""
    model = _model(I2V)
    gen = torch.Generator().manual_seed(3)
    y = torch.cat([wan_core.i2v.frame_mask(21, 8, 10, False), torch.randn(1, 16, 6, 8, 10, generator=gen)], dim=1)
    image = wan_core.ImageEmbeds(torch.randn(1, 257, 64, generator=gen), y)
    clip = _render(model, image=image)
    calls = _Calls(monkeypatch)
    out = extend(model, _embeds(), clip, Extension(37, overlap=8, segment=25), SETTINGS, StandaloneHost("cpu"),
                 image=image)
    assert out.shape[2] == 10 and torch.equal(out[:, :, :6], clip)
    seen = calls.calls[0]["y"][:1]
    assert seen.shape == (1, 20, 6, 8, 10) and all(c["x"] == 6 for c in calls.calls)
    assert (seen[:, :4, :2] == 1).all() and (seen[:, :4, 2:] == 0).all()
    assert torch.allclose(seen[:, 4:, :2], wan_core.normalize_latents(clip[:, :, -2:]))
    assert torch.equal(seen[:, 4:, 2:], y[:, 4:, -1:].expand(-1, -1, 4, -1, -1))
    with pytest.raises(InputError, match="needs the clip's image conditioning"):
        extend(model, _embeds(), clip, Extension(37, overlap=8, segment=25), SETTINGS, StandaloneHost("cpu"))


def test_a_vace_extension_keeps_the_carried_frames_and_generates_the_rest(monkeypatch):
    """VACE: inactive latents = the carried frames, then blank; reactive blank; mask 0 over the carried frames, 1
    after. Blank = the clip's own inactive latents at its last generated frame (control x (1 - mask) = 0 there)."""
    model = wan_core.WanDiT(VACE)
    model.load_state_dict(random_official_state(VACE, seed=4))
    model.eval()
    gen = torch.Generator().manual_seed(2)
    context = torch.cat([torch.randn(1, 32, 6, 8, 10, generator=gen), torch.ones(1, 64, 6, 8, 10)], dim=1)
    vace = wan_core.VaceEmbeds(context)
    clip = _render(model, vace=vace)
    calls = _Calls(monkeypatch)
    out = extend(model, _embeds(), clip, Extension(33, overlap=4, segment=17), SETTINGS, StandaloneHost("cpu"),
                 vace=vace)
    assert out.shape[2] == 9 and torch.equal(out[:, :, :6], clip)
    seen = calls.calls[0]["vace"][:1]
    assert seen.shape == (1, 96, 4, 8, 10)
    assert torch.allclose(seen[:, :16, :1], wan_core.normalize_latents(clip[:, :, -1:]))
    blank = context[:, :16, -1:]
    assert torch.equal(seen[:, :16, 1:], blank.expand(-1, -1, 3, -1, -1))
    assert torch.equal(seen[:, 16:32], blank.expand(-1, -1, 4, -1, -1))
    assert (seen[:, 32:, :1] == 0).all() and (seen[:, 32:, 1:] == 1).all()


def test_a_vace_context_that_keeps_every_frame_has_no_blank_latents():
    context = torch.cat([torch.randn(1, 32, 6, 8, 10), torch.zeros(1, 64, 6, 8, 10)], dim=1)
    with pytest.raises(InputError, match="generates no frame whole"):
        vace_segment(wan_core.VaceEmbeds(context), torch.randn(1, 16, 1, 8, 10), 4)


def test_bad_inputs_fail_before_any_step(monkeypatch):
    """Every segment is checked before the first step of the first: a prompt of the wrong width in the second
    segment stops the extension with no model call."""
    model = _model(T2V)
    clip = torch.randn(1, 16, 6, 8, 10)
    calls = _Calls(monkeypatch)
    wrong = TextEmbeds(torch.randn(1, 6, TEXT_DIM + 1), torch.randn(1, 9, TEXT_DIM + 1))
    with pytest.raises(InputError):
        extend(model, [_embeds(), wrong], clip, Extension(45, overlap=8, segment=25), SETTINGS,
               StandaloneHost("cpu"))
    with pytest.raises(InputError, match="image-to-video model needs the clip's image conditioning"):
        image_segment(None, clip[:, :, -2:], 7)
    assert calls.calls == []


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_cli_extends_in_latent_space_and_decodes_once(tmp_path, monkeypatch, capsys, task):
    """--extend-to 25 from a 9-frame clip (3 latent) by 9-frame segments carrying 4 frames (1 latent): 3 + 2 + 2
    = 7 latent frames, 25 frames; the VAE decodes once, over the whole latent, and encodes nothing but the i2v
    start image (once, before the first render); the manifest replays the extension."""
    from test_cli import _frames

    from wan_core.cli import main
    from wan_core.replay import replay_argv
    from wan_core.video import write_video

    counts = {"encode": 0, "decode": 0}
    for name in counts:
        original = getattr(wan_core.WanVAE, name)
        monkeypatch.setattr(wan_core.WanVAE, name, lambda self, *a, _o=original, _n=name, **k:
                            counts.__setitem__(_n, counts[_n] + 1) or _o(self, *a, **k))
    out = tmp_path / f"{task}.mp4"
    args = [task, "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--out", str(out),
            "--steps", "2", "--frames", "9", "--width", "64", "--height", "48", "--extend-to", "25",
            "--extend-overlap", "4", "--extend-prompt", "the fox runs"]
    if task == "i2v":
        image = write_video(torch.rand(1, 48, 64, 3), tmp_path / "start", fmt="png") / "frame_00000.png"
        args += ["--image", str(image)]
    assert main(args) == 0
    assert _frames(capsys.readouterr().out.strip()) == (25, 48, 64)
    assert counts == {"encode": 1 if task == "i2v" else 0, "decode": 1}
    argv = replay_argv(out, tmp_path / "models", None, None)
    assert argv[argv.index("--extend-to") + 1] == "25" and "--extend-prompt=the fox runs" in argv
    shorter = [a if a != "25" else "5" for a in args]
    assert main(shorter) == 2  # shorter than the clip: refused before anything loads
    assert "more than the 5 to extend to" in capsys.readouterr().err
