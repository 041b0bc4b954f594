"""Video writer benchmark: 81 frames at 832x480 to each format, ours vs imageio-ffmpeg.

Frames are produced one at a time (a moving gradient), so the figures show the writer's own
memory: ours encodes in-process with PyAV; imageio-ffmpeg pipes raw frames to an ffmpeg child
process, whose peak memory is counted too. Each run is a fresh process.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import gib, peak_rss_bytes, run_worker

WIDTH, HEIGHT = 832, 480
FORMATS = ("mp4", "mp4-h265", "webm", "gif", "mov", "png")
# Equivalent ffmpeg settings for the formats imageio-ffmpeg is compared on.
REFERENCE = {"mp4": ("libx264", ["-crf", "19"], "yuv420p", ".mp4"),
             "webm": ("libvpx-vp9", ["-crf", "30", "-b:v", "0", "-row-mt", "1"], "yuv420p", ".webm"),
             "mov": ("prores_ks", ["-profile:v", "2"], "yuv422p10le", ".mov")}


class Frames:
    """``count`` frames ``[H, W, 3]`` uint8 made on demand."""

    def __init__(self, count: int):
        self.shape = (count, HEIGHT, WIDTH, 3)
        y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
        self._x, self._y = x / WIDTH, y / HEIGHT

    def __iter__(self):
        for i in range(self.shape[0]):
            t = i / self.shape[0]
            rgb = np.stack([(self._x + t) % 1, self._y, (self._x * self._y + t / 2) % 1], -1)
            yield (rgb * 255).astype(np.uint8)


def _peak(who) -> int:
    if who == resource.RUSAGE_SELF:
        return peak_rss_bytes()
    return resource.getrusage(who).ru_maxrss * 1024  # the ffmpeg child (an upper bound: see common.py)


def worker(impl: str, fmt: str, count: int, folder: str) -> dict:
    frames = Frames(count)
    base = _peak(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if impl == "wan_core":
        from wan_core import write_video

        path = write_video(frames, Path(folder) / f"ours_{fmt}_{count}", fps=16, fmt=fmt)
    else:
        import imageio_ffmpeg

        codec, params, pix_fmt, suffix = REFERENCE[fmt]
        path = Path(folder) / f"ref_{fmt}_{count}{suffix}"
        writer = imageio_ffmpeg.write_frames(str(path), (WIDTH, HEIGHT), fps=16, codec=codec, pix_fmt_out=pix_fmt,
                                             output_params=params, macro_block_size=1)
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
    return {"seconds": seconds, "self_peak": _peak(resource.RUSAGE_SELF), "base": base,
            "child_peak": _peak(resource.RUSAGE_CHILDREN), "bytes": size}


def main() -> None:
    try:
        import imageio_ffmpeg  # noqa: F401
        have_reference = True
    except ImportError:
        have_reference = False
    print(f"Video writing, {WIDTH}x{HEIGHT} frames made one at a time, 16 fps; peak RSS includes any encoder "
          "child process")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            ours = {n: run_worker("benchmarks.video", "wan_core", fmt, str(n), tmp) for n in (41, 81)}
            r = ours[81]
            line = (f"  {fmt:9s} ours {r['seconds']:6.2f} s, {r['bytes'] / 2**20:6.1f} MiB, peak RSS "
                    f"{gib(r['self_peak'])} (41 frames: {gib(ours[41]['self_peak'])})")
            if have_reference and fmt in REFERENCE:
                ref = run_worker("benchmarks.video", "imageio", fmt, "81", tmp)
                total = ref["self_peak"] + ref["child_peak"]
                line += (f" | imageio-ffmpeg {ref['seconds']:6.2f} s ({r['seconds'] / ref['seconds']:4.2f}x), "
                         f"{ref['bytes'] / 2**20:6.1f} MiB, peak RSS {gib(total)} (python + ffmpeg)")
            print(line)


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])))
