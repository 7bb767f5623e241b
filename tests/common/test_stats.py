"""Wilson intervals and McNemar's test against textbook values and naive loops."""
from __future__ import annotations

import math
import random

import pytest

from common.stats import mcnemar, wilson_interval


def test_wilson_matches_known_values_and_covers():
    lo, hi = wilson_interval(8, 10)                       # textbook: 0.490 .. 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == pytest.approx(1)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert lo + hi == pytest.approx(1.0) and hi - lo == pytest.approx(0.19, abs=0.005)
    rng = random.Random(0)                                 # coverage near 95 % at p = 0.3
    hits = 0
    for _ in range(2000):
        k = sum(rng.random() < 0.3 for _ in range(60))
        lo, hi = wilson_interval(k, 60)
        hits += lo <= 0.3 <= hi
    assert 0.92 < hits / 2000 < 0.98


def test_mcnemar_counts_discordant_pairs_and_signs():
    before = [True, False, False, False, True, False] * 10
    after = [True, True, True, False, False, True] * 10
    result = mcnemar(before, after)
    gained = sum(1 for a, b in zip(before, after) if b and not a)
    lost = sum(1 for a, b in zip(before, after) if a and not b)
    assert (result["gained"], result["lost"]) == (gained, lost) == (30, 10)
    assert result["z"] == pytest.approx((20 - 1) / math.sqrt(40))
    assert result["p"] == pytest.approx(math.erfc(result["z"] / math.sqrt(2)))
    assert mcnemar(after, before)["z"] == pytest.approx(-result["z"])
    assert mcnemar(before, before) == {"pairs": 60, "gained": 0, "lost": 0, "z": 0.0, "p": 1.0}
    with pytest.raises(ValueError, match="length"):
        mcnemar([True], [True, False])
