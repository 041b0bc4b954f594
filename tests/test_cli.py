"""The command line renders through the whole pipeline on the demo models (the README's main job)."""

from __future__ import annotations

import av
import pytest
import torch

from wan_core.cli import main
from wan_core.demo import DEMO_SIZE
from wan_core.video import write_video


def _frames(path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return len(frames), frames[0].height, frames[0].width


@pytest.mark.parametrize("task", ["t2v", "i2v", "flf2v"])
def test_demo_render(tmp_path, task, capsys):
    args = [task, "--demo", "--models", str(tmp_path / "models"), "--prompt", "a red fox", "--out",
            str(tmp_path / f"{task}.mp4"), "--steps", "2"]
    if task != "t2v":
        image = write_video(torch.rand(1, 96, 160, 3), tmp_path / "start", fmt="png") / "frame_00000.png"
        args += ["--image", str(image)] + (["--end-image", str(image)] if task == "flf2v" else [])
    assert main(args) == 0
    written = capsys.readouterr().out.strip()
    assert written == str(tmp_path / f"{task}.mp4")
    assert _frames(written) == (DEMO_SIZE["frames"], DEMO_SIZE["height"], DEMO_SIZE["width"])


def test_bad_request_fails_before_rendering(tmp_path, capsys):
    code = main(["t2v", "--demo", "--models", str(tmp_path / "m"), "--prompt", "x", "--out", str(tmp_path / "o.mp4"),
                 "--frames", "14"])
    assert code == 2 and "use 13 or 17" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
    code = main(["t2v", "--models", str(tmp_path / "empty"), "--prompt", "x", "--out", str(tmp_path / "o.mp4")])
    assert code == 2 and "--demo" in capsys.readouterr().err
