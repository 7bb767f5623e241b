"""common/metrics.py: JSONL lines as logged, W&B offline run in the run directory."""
from __future__ import annotations

import pytest

from common.metrics import MetricsLogger, read_jsonl, wandb_mode


def test_jsonl_lines_and_torn_tail(tmp_path):
    with MetricsLogger(tmp_path, "learner", use_wandb=False) as m:
        m.log({"loss": 0.5, "group_ids": ["a", "b"]}, step=1)
        m.log({"loss": float("nan")}, step=2)
    with open(tmp_path / "learner.jsonl", "a") as f:
        f.write('{"step": 3, "lo')            # a crash mid-line
    rows = read_jsonl(tmp_path / "learner.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["group_ids"] == ["a", "b"] and rows[1]["loss"] == "nan"


@pytest.mark.slow
def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert wandb_mode() == "offline"
    with MetricsLogger(tmp_path, "learner", use_wandb=True, config={"lr": 1e-4}) as m:
        assert m.wandb_run_id is not None
        m.log({"loss": 0.25}, step=1)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
