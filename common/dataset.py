"""Demonstration datasets on disk: a directory of trajectory records.

Layout: ``<dir>/index.jsonl`` (one line per record: trajectory_id, task_id, file) and
``<dir>/records/<trajectory_id>.msgpack`` holding :func:`common.wire.trajectory.encode` bytes,
so a dataset is the same wire format the actors stream, validated again on read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from common.wire.trajectory import Trajectory, decode, encode


def write_trajectory(root: str | os.PathLike, traj: Trajectory,
                     extra: dict | None = None) -> None:
    """Append one record; the file is written before its index line, so a crash never
    leaves an index entry without its record. ``extra``: more keys for its index line (a
    demo's behaviour fingerprint)."""
    root = Path(root)
    (root / "records").mkdir(parents=True, exist_ok=True)
    rel = f"records/{traj.trajectory_id}.msgpack"
    tmp = root / (rel + ".tmp")
    tmp.write_bytes(encode(traj))
    os.replace(tmp, root / rel)
    with open(root / "index.jsonl", "a") as f:
        f.write(json.dumps({"trajectory_id": traj.trajectory_id, "task_id": traj.task_id,
                            "success": traj.success, "file": rel, **(extra or {})}) + "\n")


def read_index(root: str | os.PathLike) -> list[dict]:
    path = Path(root) / "index.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {root} (missing index.jsonl); "
                                "record one with `pushcut demos`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_dataset(root: str | os.PathLike, per_task: int | None = None) -> Iterator[Trajectory]:
    """Yield records in index order, at most ``per_task`` of each task."""
    seen: dict[str, int] = {}
    for entry in read_index(root):
        n = seen.get(entry["task_id"], 0)
        if per_task is not None and n >= per_task:
            continue
        seen[entry["task_id"]] = n + 1
        yield decode((Path(root) / entry["file"]).read_bytes())
