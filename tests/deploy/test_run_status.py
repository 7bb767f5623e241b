"""The status of ``pushcut run`` (deploy/run_status.py) from a real ``learner.jsonl``: the
filter's counts added up over the learner's lives, retired children, and a stall with its
likely cause."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from deploy.run_status import LearnerLog, StatusBoard, one_line, render

RUNNING = {"store": "running", "learner": "running", "actor-0": "running",
           "actor-1": "running"}


def append(path: Path, *records: dict) -> None:
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def rendered(figures: dict) -> str:
    console = Console(record=True, width=200)
    console.print(render(figures))
    return console.export_text()


def test_the_filter_counts_add_up_over_the_learner_s_lives(tmp_path):
    path = tmp_path / "learner.jsonl"
    log = LearnerLog(path)
    log.refresh()
    assert log.counts() is None                               # nothing logged yet
    append(path, {"event": "start", "policy_version": 0},
           {"event": "update", "time": 1.0, "policy_version": 1, "kept": 4,
            "dropped_stale": 1},
           {"event": "wait", "time": 2.0, "policy_version": 1, "kept": 4,
            "dropped_stale": 3, "dropped_success_low": 2})
    log.refresh()
    assert log.counts() == {"kept": 4, "dropped_stale": 3, "dropped_success_low": 2}
    # SIGKILLed: the resumed learner's filter counts from zero again
    append(path, {"event": "start", "policy_version": 0},
           {"event": "update", "time": 3.0, "policy_version": 1, "kept": 2,
            "dropped_stale": 0})
    log.refresh()
    assert log.counts() == {"kept": 6, "dropped_stale": 3, "dropped_success_low": 2}
    # stopped cleanly, then a new `pushcut run` on the same run_dir resumes it
    append(path, {"event": "stop", "policy_version": 1, "kept": 2, "dropped_stale": 1},
           {"event": "start", "policy_version": 1})
    log.refresh()
    assert log.counts() == {"kept": 6, "dropped_stale": 4, "dropped_success_low": 2}
    # a status started later reads the same file to the same totals
    board = StatusBoard(tmp_path, tmp_path / "store", "async")
    figures = board.figures(RUNNING)
    board.close()
    assert figures["kept"] == 6 and figures["dropped"] == {"stale": 4, "success_low": 2}
    assert "kept 6 dropped stale=4,success_low=2" in one_line(figures)


def test_retired_children_are_named(tmp_path):
    board = StatusBoard(tmp_path, tmp_path / "store", "async")
    figures = board.figures({**RUNNING, "actor-1": "retired"}, {"actor-1": 9})
    board.close()
    assert figures["retired"] == ["actor-1"] and figures["children"]["actor-1"] == "retired"
    assert "| retired actor-1" in one_line(figures) and "3/4 processes" in one_line(figures)
    assert "retired" in rendered(figures) and "actor-1: retired" in rendered(figures)
    json.dumps(figures)


def versions_every_10s(path: Path, base: float) -> None:
    """Three versions 10 s apart, the last at ``base``, then a wait record."""
    append(path, {"event": "start", "time": base - 25, "policy_version": 0})
    for i, t in enumerate((base - 20, base - 10, base)):
        append(path, {"event": "update", "time": t, "policy_version": i + 1, "kept": 2 * i + 2,
                      "dropped_success_low": 1})
    append(path, {"event": "wait", "time": base + 30, "policy_version": 3, "kept": 6,
                  "queue_groups": 0, "dropped_success_low": 6, "dropped_stale": 2})


def test_a_stall_is_reported_after_stall_after_times_the_usual_time_with_its_cause(tmp_path):
    board = StatusBoard(tmp_path, tmp_path / "store", "async", stall_after=5)
    base = board.started_wall + 1
    versions_every_10s(tmp_path / "learner.jsonl", base)
    assert board.figures(RUNNING, now=base + 45)["stall"] is None      # 4.5 x the usual 10 s
    figures = board.figures(RUNNING, now=base + 60)
    stall = figures["stall"]
    assert stall["for_s"] == 60 and stall["usual_s"] == 10
    assert stall["why"] == ("learner waiting for data: 0 complete group(s) in the store, 7 "
                            "dropped since the last version (stale 2, success_low 5)")
    assert "stalled: no new version for 60s (usual 10s): learner waiting" in one_line(figures)
    assert "no new version for 60s" in rendered(figures)
    causes = {
        "learner restarting": {**RUNNING, "learner": "restarting"},
        "store retired: no groups reach the learner": {**RUNNING, "store": "retired"},
        "all actors retired": {**RUNNING, "actor-0": "retired", "actor-1": "retired"},
        "no actor running (restarting, retired)": {**RUNNING, "actor-0": "restarting",
                                                   "actor-1": "retired"},
    }
    for why, states in causes.items():
        assert board.figures(states, now=base + 60)["stall"]["why"] == why
    # the next version ends it
    append(tmp_path / "learner.jsonl", {"event": "update", "time": base + 61,
                                        "policy_version": 4, "kept": 8})
    assert board.figures(RUNNING, now=base + 62)["stall"] is None
    board.close()


def test_no_stall_before_the_usual_time_is_known_nor_for_versions_before_the_status(
        tmp_path):
    path = tmp_path / "learner.jsonl"
    board = StatusBoard(tmp_path, tmp_path / "store", "async", stall_after=5)
    append(path, {"event": "start", "time": board.started_wall, "policy_version": 0},
           {"event": "update", "time": board.started_wall + 1, "policy_version": 1})
    assert board.figures(RUNNING, now=board.started_wall + 1000)["stall"] is None
    board.close()
    # a resumed run: its versions came an hour before this status started
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    later = StatusBoard(resumed, resumed / "store", "async", stall_after=5)
    hour = later.started_wall - 3600
    append(resumed / "learner.jsonl", {"event": "start", "time": hour, "policy_version": 0},
           {"event": "update", "time": hour + 1, "policy_version": 1},
           {"event": "update", "time": hour + 11, "policy_version": 2})
    assert later.figures(RUNNING, now=later.started_wall + 30)["stall"] is None
    stall = later.figures(RUNNING, now=later.started_wall + 51)["stall"]
    assert stall["for_s"] == 51 and stall["why"] == \
        "the learner's update takes longer than usual"
    later.close()
