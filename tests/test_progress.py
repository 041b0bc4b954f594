"""What the user sees while waiting: the VAE and the writer report progress through the host (per chunk of
every tile, per frame) as the sampler does per step; the command line shows a bar on a terminal (tried in
a pseudo-terminal) and plain lines otherwise."""

from __future__ import annotations

import io
import logging
import os
import pty
import select
import subprocess
import sys

import pytest
import torch
from workflow_runner import load_pack

import wan_core
import wan_core.demo
from wan_core.display import ProgressDisplay, eta_text


class Recorder:
    def __init__(self):
        self.updates = []

    def __call__(self, stage, done, total):
        self.updates.append((stage, done, total))

    def of(self, stage):
        return [(done, total) for s, done, total in self.updates if s == stage]


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return wan_core.load_vae(wan_core.demo.write_demo_models(tmp_path_factory.mktemp("demo"))["vae"])


def test_the_standalone_host_records_each_decode_chunk_and_each_written_frame(vae, tmp_path):
    recorder = Recorder()
    host = wan_core.StandaloneHost("cpu", on_progress=recorder)
    video = wan_core.decode_latent(vae, torch.randn(1, 16, 3, 4, 6), host, "off")  # 3 latent frames: 3 chunks
    assert recorder.of("decoding") == [(1, 3), (2, 3), (3, 3)]
    frames = wan_core.video_to_images(video)
    wan_core.write_video(frames, tmp_path / "v.mp4", progress=host.count("writing"))
    assert recorder.of("writing") == [(i, 9) for i in range(1, 10)]  # 4 * 2 + 1 frames

    wan_core.encode_video(vae, video, host, "off")
    assert recorder.of("encoding") == [(1, 3), (2, 3), (3, 3)]


def test_a_tiled_decode_counts_the_chunks_of_every_tile(vae):
    seen = []
    wan_core.decode_tiled(vae, torch.randn(1, 16, 2, 4, 20), tile=10, overlap=2, progress=lambda *a: seen.append(a))
    tiles = len(wan_core.models.vae_tiling.tile_starts(20, 10, 2))  # one row of tiles
    assert tiles > 1 and seen == [(i, 2 * tiles) for i in range(1, 2 * tiles + 1)]


def test_inside_comfyui_stages_drive_its_progress_bar(monkeypatch):
    pack = load_pack()
    node_host = pack.nodes.host
    calls = []

    class Bar:  # the parts of comfy.utils.ProgressBar that we call
        def __init__(self, total):
            calls.append(("new", total))

        def update_absolute(self, value, total=None, preview=None):
            calls.append((value, total))

    monkeypatch.setattr(node_host, "IN_COMFYUI", True)
    monkeypatch.setattr(node_host, "_utils", type("utils", (), {"ProgressBar": Bar}))
    count = node_host.HOST.count("decoding")
    for done in (1, 2, 3):
        count(done, 3)
    count(1, 8)  # a fallback starting over in tiles
    assert calls == [("new", 3), (1, 3), (2, 3), (3, 3), (1, 8)]


def test_the_video_writer_node_reports_each_frame(monkeypatch, tmp_path):
    pack = load_pack()
    recorder = Recorder()
    monkeypatch.setenv("WANCORE_OUTPUT", str(tmp_path))
    monkeypatch.setattr(pack.nodes.host, "stage_count", lambda stage: lambda d, t: recorder(stage, d, t))
    writer = pack.NODE_CLASS_MAPPINGS["WanCoreVideoWriter"]()
    writer.write(torch.rand(5, 16, 16, 3), 16.0, "clip", "mp4", -1, False)
    assert recorder.of("writing") == [(i, 5) for i in range(1, 6)]


def test_the_display_draws_a_bar_with_rate_and_time_left_on_a_terminal():
    stream, now = io.StringIO(), [0.0]
    display = ProgressDisplay(stream, tty=True, clock=lambda: now[0])
    for step in (1, 2, 3):  # 2 s per step after the first report: 5 steps left after step 3
        now[0] = 10.0 + 2.0 * step
        display("sampling", step, 8)
    display("sampling", 8, 8)
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "sampling     3/8 [#########...............] 2.00 s/step, 10 s left" in text
    assert eta_text(65) == "1:05" and eta_text(3725.2) == "1:02:06" and eta_text(0.2) == "1 s"


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: each line as its last carriage return left it, erase-to-end
    codes dropped."""
    return [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in text.split("\n")]


def test_a_log_record_during_a_bar_prints_above_it_and_the_bar_is_drawn_again():
    from wan_core.display import BarAwareHandler

    stream = io.StringIO()
    display = ProgressDisplay(stream, tty=True, clock=lambda: 0.0)
    logger = logging.getLogger("test.display.bar")
    logger.propagate, handler = False, BarAwareHandler(stream)
    logger.addHandler(handler)
    try:
        display("sampling", 1, 3)
        logger.warning("a warning between two steps")
        display("sampling", 2, 3)
        display("sampling", 3, 3)
        logger.warning("after the stage")
    finally:
        logger.removeHandler(handler)
    assert _screen(stream.getvalue()) == ["a warning between two steps",
                                          "sampling     3/3 [########################]", "after the stage", ""]


def test_the_display_logs_plain_lines_off_a_terminal(caplog):
    stream = io.StringIO()
    display = ProgressDisplay(stream, logging.getLogger("test.display"), tty=False, clock=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="test.display"):
        for step in range(1, 4):
            display("sampling", step, 3)
        for frame in range(1, 9):
            display("writing", frame, 8)
    lines = caplog.messages
    assert stream.getvalue() == "" and not any("\r" in line for line in lines)
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3", "2/8", "4/8", "6/8", "8/8"]


def _cli(tmp_path) -> list[str]:
    return [sys.executable, "-m", "wan_core", "t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt",
            "a fox", "--out", str(tmp_path / "fox.mp4"), "--steps", "3"]


def test_the_cli_shows_a_bar_on_a_terminal_and_plain_lines_otherwise(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    master, slave = pty.openpty()
    proc = subprocess.Popen(_cli(tmp_path), stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    terminal = seen.decode(errors="replace")
    assert "\rsampling     2/3 [################........]" in terminal and "s/step" in terminal
    assert "left" in terminal and "\rdecoding" in terminal and "\rwriting" in terminal

    piped = subprocess.run(_cli(tmp_path / "again"), capture_output=True, text=True, env=env, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "sampling     3/3 [" in piped.stderr and "writing " in piped.stderr
