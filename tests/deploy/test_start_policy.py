"""Choosing the temperature RL samples at from the start policy's held-out success."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import load_config
from deploy.start_policy import StartPolicyTooWeak, choose_temperature, measure


def fake_evaluate(success: dict[float, float], calls: list):
    """An evaluate() that writes eval.json with the given success per temperature."""
    def evaluate(temperatures: list[float], out: Path) -> None:
        calls.append(list(temperatures))
        out.mkdir(parents=True)
        temps = {("greedy" if t == 0 else f"T={t:g}"): {"temperature": t, "average": success[t]}
                 for t in temperatures}
        (out / "eval.json").write_text(json.dumps({"temperatures": temps}))
    return evaluate


def test_choose_keeps_the_highest_temperature_close_enough_to_greedy():
    assert choose_temperature({0.0: 0.4, 1.0: 0.3, 0.6: 0.35}, 1.0, 0.5) == 1.0
    assert choose_temperature({0.0: 0.4, 1.0: 0.1, 0.6: 0.3}, 1.0, 0.5) == 0.6
    assert choose_temperature({0.0: 0.4, 1.0: 0.1}, 1.0, 0.5) is None
    assert choose_temperature({0.0: 0.0, 1.0: 0.0}, 1.0, 0.5) is None   # 0 >= 0 is no signal


def test_measure_keeps_lowers_or_refuses(tmp_path):
    cfg = load_config(["algo.temperature=1.0", "run.temperature_tries=3"])
    calls: list = []
    t, line = measure(cfg, tmp_path / "a", fake_evaluate({0.0: 0.4, 1.0: 0.3}, calls))
    assert t == 1.0 and calls == [[0.0, 1.0]] and "40 % greedy" in line
    # too blurred at T=1 and 0.6; 0.36 samples at least half of greedy
    calls = []
    t, line = measure(cfg, tmp_path / "b",
                      fake_evaluate({0.0: 0.4, 1.0: 0.05, 0.6: 0.1, 0.36: 0.25}, calls))
    assert t == 0.36 and calls == [[0.0, 1.0], [0.6], [0.36]]
    assert "algo.temperature=0.36" in line
    # measured once: a second call reads the files and evaluates nothing
    calls = []
    assert measure(cfg, tmp_path / "b", fake_evaluate({}, calls))[0] == 0.36 and calls == []
    # never close enough: the best sampled success
    t, _ = measure(cfg, tmp_path / "c", fake_evaluate(
        {0.0: 0.9, 1.0: 0.1, 0.6: 0.2, 0.36: 0.3, 0.216: 0.25}, []))
    assert t == 0.36
    with pytest.raises(StartPolicyTooWeak, match="never succeeds"):
        measure(cfg, tmp_path / "d", fake_evaluate(
            {0.0: 0.0, 1.0: 0.0, 0.6: 0.0, 0.36: 0.0, 0.216: 0.0}, []))
