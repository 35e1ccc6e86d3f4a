"""The demo's checks can fail: each one on numbers that must fail it (the --fast demo's own numbers are checked in
tests/apps/test_demo.py, including the champion failing the retraining check on stream 2)."""

from __future__ import annotations

import pytest

from apps.demo import gap_halved


@pytest.mark.parametrize("champion_gap, challenger_gap, expected", [
    (0.45, 0.15, True),  # retraining closed two thirds of the gap
    (0.45, 0.225, True),  # exactly half
    (0.45, 0.30, False),  # closed only a third
    (0.45, 0.45, False),  # the champion itself, not retrained
    (0.45, 0.60, False),  # worse
    (0.0, 0.0, True),  # no gap to close
    (None, 0.1, None),
    (0.3, None, None),
])
def test_gap_halved(champion_gap, challenger_gap, expected):
    assert gap_halved(champion_gap, challenger_gap) is expected
