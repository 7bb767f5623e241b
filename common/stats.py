"""Statistics for success rates: Wilson 95 % intervals and McNemar's paired test.

In: counts of successes, or paired per-episode outcomes (the same initial states under two
policies). Out: intervals and test figures for eval.json, reports and status lines, so a
lift can be told from noise.
"""
from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054   # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion -> (lo, hi); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(before: Sequence[bool], after: Sequence[bool]) -> dict[str, float | int]:
    """McNemar's test on paired outcomes (episode i of both on the same initial state):
    ``gained`` (failed before, succeeded after), ``lost`` (the reverse), ``z`` (signed,
    > 0 when ``after`` is better; continuity-corrected) and the two-sided ``p`` value."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes differ in length: {len(before)} vs {len(after)}")
    gained = sum(1 for a, b in zip(before, after) if b and not a)
    lost = sum(1 for a, b in zip(before, after) if a and not b)
    if gained + lost == 0:
        return {"pairs": len(before), "gained": 0, "lost": 0, "z": 0.0, "p": 1.0}
    z = math.copysign(max(abs(gained - lost) - 1, 0) / math.sqrt(gained + lost), gained - lost)
    return {"pairs": len(before), "gained": gained, "lost": lost, "z": z,
            "p": math.erfc(abs(z) / math.sqrt(2))}
