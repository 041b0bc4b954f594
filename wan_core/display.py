"""What the command line shows while a render runs: a progress bar in a terminal, plain log lines otherwise.

:class:`ProgressDisplay` is a :data:`~wan_core.host.OnProgress` for :class:`~wan_core.host.StandaloneHost`:
it is told ``(stage, done, total)`` after every sampling step, VAE chunk and written frame. In a terminal it
redraws one line per stage (``sampling   3/8 [#########...............] 1.52 s/step, 8 s left``) and ends it
when the stage is done; into a file or pipe it logs a line per step, and per quarter of the other stages.
Times are measured from the stage's first report, so a first step that compiles or loads does not skew them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

UNITS = {"sampling": "step", "decoding": "chunk", "encoding": "chunk", "writing": "frame"}
"""What one unit of each stage is, for the rate (``s/step``)."""
BAR = 24
"""Width of the bar in characters."""


def eta_text(seconds: float) -> str:
    """``12 s``, ``3:05``, ``1:02:07`` (seconds rounded up)."""
    whole = int(-(-seconds // 1))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """Progress of a render's stages on ``stream`` (a bar when ``tty``, default: when the stream is a terminal)
    or as lines of ``logger``; ``clock`` gives seconds (monotonic)."""

    def __init__(self, stream: TextIO | None = None, logger: logging.Logger | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.tty = _is_terminal(self.stream) if tty is None else tty
        self.log = logger or logging.getLogger(__name__)
        self.clock = clock
        self._stage, self._first, self._last = None, (0, 0.0), 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self._stage or done <= self._last:  # a new stage, or one starting over (a fallback)
            self._stage, self._first = stage, (done, now)
        self._last = done
        text = self.line(stage, done, total, now)
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K" + ("\n" if done >= total else ""))
            self.stream.flush()
            _DRAWN[id(self.stream)] = text if done < total else None
        elif stage == "sampling" or done >= total or _quarter(done, total) > _quarter(done - 1, total):
            self.log.info(text)
        if done >= total:
            self._stage = None

    def line(self, stage: str, done: int, total: int, now: float) -> str:
        """``stage done/total [bar] rate, time left`` (the rate once two reports are apart)."""
        filled = BAR * done // max(total, 1)
        text = f"{stage:<9} {done:>4}/{total} [{'#' * filled}{'.' * (BAR - filled)}]"
        first_done, first_time = self._first
        if done > first_done and now > first_time:
            per = (now - first_time) / (done - first_done)
            unit = UNITS.get(stage, "unit")
            rate = f"{per:.2f} s/{unit}" if per >= 0.1 else f"{1 / per:.1f} {unit}s/s"
            text += f" {rate}, {eta_text(per * (total - done))} left" if done < total else f" {rate}"
        return text


_DRAWN: dict[int, str | None] = {}
"""The bar each terminal stream (by id) shows on its last, unfinished line: what a log record clears and redraws."""


class BarAwareHandler(logging.StreamHandler):
    """A log handler for the terminal a :class:`ProgressDisplay` draws on: a record first clears the bar's line,
    then the bar is drawn again below it (without it, records run into the bar's line)."""

    def emit(self, record: logging.LogRecord) -> None:
        drawn = _DRAWN.get(id(self.stream))
        if drawn:
            self.stream.write("\r\x1b[K")
        super().emit(record)
        if drawn:
            self.stream.write(f"\r{drawn}\x1b[K")
            self.flush()


def _quarter(done: int, total: int) -> int:
    return 4 * done // max(total, 1)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or wrapped stream
        return False
