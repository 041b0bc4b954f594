"""Video writer / reader round trips, decoded independently with PyAV; metadata; file safety."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from wan_core.errors import InputError
from wan_core.video import (
    extension,
    images_to_video,
    next_output_path,
    read_metadata,
    read_video,
    video_to_images,
    write_video,
)

FRAMES = 17
# Mean abs error per channel value (0..1) for the moving-gradient clip at default quality:
# CRF 19 / 24 / 30 and ProRes lose under 2% on this smooth content; a 256-colour GIF palette with
# dithering under 6%; PNG is lossless (checked exactly against the uint8 frames).
BOUNDS = {"mp4": 0.02, "mp4-h265": 0.02, "webm": 0.02, "gif": 0.06, "mov": 0.015}
PADDED = {"mp4", "mp4-h265", "mov"}  # need even sides: one row / column added to an odd size
META = {"prompt": json.dumps({"3": {"class_type": "WanCoreSampler", "inputs": {"seed": 42}}}),
        "workflow": json.dumps({"nodes": [{"id": 1, "title": "héllo ✓"}], "links": []}, ensure_ascii=False)}


def gradient_clip(width: int, height: int, frames: int = FRAMES) -> torch.Tensor:
    """A moving colour gradient ``[F, H, W, 3]`` in 0..1."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([torch.stack([(x + i / frames) % 1, y, (x * y + i / (2 * frames)) % 1], -1)
                        for i in range(frames)])


def _decode_with_pyav(path) -> tuple[np.ndarray, Fraction]:
    if path.is_dir():
        frames = []
        for file in sorted(path.glob("*.png")):
            with av.open(str(file)) as c:
                frames.append(next(c.decode(video=0)).to_ndarray(format="rgb24"))
        return np.stack(frames), Fraction(16)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        return np.stack(frames), Fraction(stream.average_rate)


@pytest.mark.parametrize("size", [(96, 64), (97, 65)], ids=["even", "odd"])
@pytest.mark.parametrize("fmt", ["mp4", "mp4-h265", "webm", "gif", "mov", "png"])
def test_round_trip(tmp_path, fmt, size):
    width, height = size
    clip = gradient_clip(width, height)
    path = write_video(clip, tmp_path / "clip", fps=16, fmt=fmt)
    assert path.name == "clip" + extension(fmt)
    frames, fps = _decode_with_pyav(path)
    pad = fmt in PADDED
    assert frames.shape == (FRAMES, height + (height % 2 if pad else 0), width + (width % 2 if pad else 0), 3)
    assert fps == (Fraction(50, 3) if fmt == "gif" else 16)
    decoded = torch.from_numpy(frames[:, :height, :width]).float() / 255
    reference = (clip * 255 + 0.5).to(torch.uint8).float() / 255
    if fmt == "png":
        assert torch.equal(decoded, reference)
    else:
        assert (decoded - reference).abs().mean() <= BOUNDS[fmt]
    ours = read_video(path)
    assert torch.equal(ours.frames, torch.from_numpy(frames)) and ours.fps == fps


def test_fractional_fps(tmp_path):
    path = write_video(gradient_clip(32, 32, 5), tmp_path / "ntsc.mp4", fps=Fraction(30000, 1001))
    assert _decode_with_pyav(path)[1] == Fraction(30000, 1001)


@pytest.mark.parametrize("fmt", ["mp4", "mov", "webm", "png"])
def test_metadata_round_trip(tmp_path, fmt):
    path = write_video(gradient_clip(32, 32, 5), tmp_path / "meta", fps=16, fmt=fmt, metadata=META)
    got = read_metadata(path)
    assert {k: got[k] for k in META} == META
    if fmt != "png":  # independently: the container's own tags as PyAV reads them
        with av.open(str(path)) as c:
            assert {k.lower(): v for k, v in c.metadata.items()}["workflow"] == META["workflow"]


class _Failing:
    """A frame source that raises ``error`` after ``good`` frames."""

    def __init__(self, clip, good, error):
        self.clip, self.good, self.error, self.shape = clip, good, error, clip.shape

    def __iter__(self):
        for i, frame in enumerate(self.clip):
            if i == self.good:
                raise self.error
            yield frame


@pytest.mark.parametrize("fmt", ["mp4", "gif", "png"])
@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("boom")], ids=["interrupt", "exception"])
def test_failed_write_leaves_nothing(tmp_path, fmt, error):
    with pytest.raises(type(error)):
        write_video(_Failing(gradient_clip(32, 32, 9), 5, error), tmp_path / "x", fmt=fmt)
    assert list(tmp_path.iterdir()) == []


def test_existing_files_are_never_overwritten(tmp_path):
    first = write_video(gradient_clip(32, 32, 5), tmp_path / "a.mp4")
    before = first.read_bytes()
    second = write_video(gradient_clip(32, 32, 9), tmp_path / "a.mp4")
    assert second != first and second.name == "a-1.mp4"
    assert first.read_bytes() == before
    assert next_output_path(tmp_path, "a", ".mp4").name == "a_00001.mp4"
    (tmp_path / "a_00007.mp4").write_bytes(b"")
    assert next_output_path(tmp_path, "a", ".mp4").name == "a_00008.mp4"
    nested = next_output_path(tmp_path, "wan/run", ".webm")
    assert nested == tmp_path.resolve() / "wan" / "run_00001.webm"


@pytest.mark.parametrize("prefix", ["../escape", "/etc/passwd", "a/../../b", "", "..\\win"])
def test_prefix_cannot_leave_the_output_folder(tmp_path, prefix):
    with pytest.raises(InputError, match="filename prefix"):
        next_output_path(tmp_path / "out", prefix, ".mp4")


def _counting_clip(frames: int = 12) -> torch.Tensor:
    """Frame i is a flat grey of level 20 * i (uint8), so a decoded frame tells its own index."""
    return torch.stack([torch.full((32, 48, 3), 20 * i, dtype=torch.uint8) for i in range(frames)])


@pytest.mark.parametrize("fmt", ["png", "mp4"])
def test_reader_selection(tmp_path, fmt):
    path = write_video(_counting_clip(), tmp_path / "count", fps=24, fmt=fmt, quality=0)
    clip = read_video(path, start=2, stride=3, max_frames=3, size=(24, 16))
    assert clip.frames.shape == (3, 16, 24, 3) and clip.frames.dtype == torch.uint8
    levels = clip.frames.float().mean(dim=(1, 2, 3)) / 20
    assert torch.allclose(levels, torch.tensor([2.0, 5.0, 8.0]), atol=0.1)
    assert clip.fps == Fraction(24, 3)
    assert read_video(path, start=10).frames.shape[0] == 2
    with pytest.raises(InputError, match="no frames"):
        read_video(path, start=50)


def test_reader_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="not a readable video"):
        read_video(junk)
    with pytest.raises(InputError, match="stride >= 1"):
        read_video(junk, stride=0)


def test_bad_writer_input(tmp_path):
    with pytest.raises(InputError, match=r"\[frames, height, width, 3\]"):
        write_video(torch.zeros(5, 32, 32), tmp_path / "x.mp4")
    with pytest.raises(InputError, match="unknown"):
        write_video(torch.zeros(5, 32, 32, 3), tmp_path / "x.avi", fmt="avi")
    with pytest.raises(InputError, match="fps must be a finite positive number"):
        write_video(torch.zeros(5, 32, 32, 3), tmp_path / "x.mp4", fps=0)
    assert list(tmp_path.iterdir()) == []


def test_comfyui_image_layout_round_trip():
    images = torch.rand(9, 16, 24, 3)
    video = images_to_video(images)
    assert video.shape == (1, 3, 9, 16, 24) and video.min() >= -1 and video.max() <= 1
    torch.testing.assert_close(video_to_images(video), images)
