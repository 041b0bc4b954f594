"""The official Wan code for parity tests; the test is skipped, visibly, when wan22 is absent."""

from __future__ import annotations

import pytest

from benchmarks import references


def wan_module(name: str):
    try:
        return references.wan_module(name)
    except ImportError as err:
        pytest.skip(str(err))
