"""A step cache as a render setting (the cache node's and the CLI's), with each kind's published defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import InputError
from .cache_tables import MAG_RATIOS, TEA_COEFFICIENTS, TEA_THRESHOLDS, table_for
from .step_cache import FirstBlockCache, MagCache, StepCache, TeaCache

log = logging.getLogger(__name__)

CACHE_KINDS = ("mag", "tea", "first_block")

# threshold, start (share of the first steps always computed), max_skips (None: no limit), per kind:
# MagCache's published defaults (thresh 0.12, retention 0.2, K 2), TeaCache's (``use_ret_steps``: the first
# 5 of 50 steps computed, no limit on skips; threshold per model, see TEA_THRESHOLDS).
_DEFAULTS = {"first_block": (0.05, 0.2, 3), "mag": (0.12, 0.2, 2), "tea": (None, 0.1, None)}


@dataclass(frozen=True)
class StepCacheSettings:
    """kind: "mag", "tea" or "first_block"; threshold, start, max_skips: ``None`` takes the kind's published
    default (for TeaCache the threshold depends on the model); :meth:`runner` makes a fresh cache per render."""

    kind: str = "mag"
    threshold: float | None = None  # higher reuses more steps; 0 never reuses
    start: float | None = None  # share of the first steps that always run every block (composition forms there)
    max_skips: int | None = None  # at most this many reused steps in a row

    def __post_init__(self) -> None:
        if self.kind not in CACHE_KINDS:
            raise InputError(f"step cache {self.kind!r} is unknown; choose one of {', '.join(CACHE_KINDS)}")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float))
                                               and 0 <= self.threshold < float("inf")):
            raise InputError(f"cache threshold must be a finite number >= 0, got {self.threshold!r} (0: never reuse)")
        if self.start is not None and not 0 <= self.start <= 1:
            raise InputError(f"cache start must be a share of the steps from 0 to 1, got {self.start!r}")
        if self.max_skips is not None and self.max_skips < 0:
            raise InputError(f"cache max_skips must be >= 0, got {self.max_skips!r}")

    def resolved(self, table: str) -> tuple[float, float, int | None]:
        """(threshold, start, max_skips) with the kind's defaults filled in for a model's ``table``."""
        threshold, start, max_skips = _DEFAULTS[self.kind]
        if self.kind == "tea":
            threshold = TEA_THRESHOLDS[table]
        return (threshold if self.threshold is None else self.threshold, start if self.start is None else self.start,
                max_skips if self.max_skips is None else self.max_skips)

    def runner(self, steps: int, branches: int, model_type: str = "t2v", dim: int = 1536,
               pixels: int = 832 * 480) -> StepCache:
        """A fresh cache for a render of ``steps`` steps whose batch holds ``branches`` CFG branches, by a
        model of ``model_type`` and width ``dim`` at ``pixels`` (width x height) per frame."""
        table = table_for(model_type, dim, pixels)
        threshold, start, max_skips = self.resolved(table)
        start_steps = int(start * steps + 0.5)  # rounded half up, as the published MagCache
        if self.kind == "first_block":
            return FirstBlockCache(threshold, branches, start_steps, max_skips)
        log.info("%s cache with the published %s table, threshold %g", self.kind, table, threshold)
        if self.kind == "mag":
            return MagCache.from_table(table, MAG_RATIOS[table], steps, branches, threshold, start_steps, max_skips)
        return TeaCache(TEA_COEFFICIENTS[table], threshold, branches, start_steps, max_skips, table)
