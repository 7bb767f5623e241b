"""The store's record of one group (``groups`` database of learner/store.py) and what is
derived from it: :class:`GroupInfo` for the filter, the eviction order key, and the rule that
a new member agrees with its group.

A group record is a msgpack map: ``task_id``, ``init_state_id``, ``group_size``,
``temperature``, ``expert``, ``policy_version`` (the lowest of its members), ``created_at``
(the oldest), ``seq`` (arrival number) and ``members`` (``[trajectory_id, success,
policy_version]`` in arrival order).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Optional

from common.wire.trajectory import Trajectory, WireError


@dataclass
class GroupInfo:
    """One group as the store sees it (members in arrival order)."""
    group_id: str
    task_id: str
    init_state_id: int
    group_size: int
    trajectory_ids: list[str]
    successes: list[bool]
    policy_versions: list[int]
    created_at: float

    @property
    def success_rate(self) -> float:
        return sum(self.successes) / len(self.successes) if self.successes else 0.0

    @property
    def is_complete(self) -> bool:
        return len(self.trajectory_ids) >= self.group_size


def order_key(record: dict[str, Any], group_id: bytes, consumed: bool) -> bytes:
    """Eviction key, sorted bytewise: consumed first, then lowest policy_version, then
    oldest created_at (microseconds), then arrival order."""
    micros = min(max(int(record["created_at"] * 1e6), -(1 << 63)), (1 << 63) - 1)
    return struct.pack(">BQQQ", 0 if consumed else 1, record["policy_version"] + (1 << 63),
                       micros + (1 << 63), record["seq"]) + group_id


def group_conflict(record: dict[str, Any], traj: Trajectory) -> Optional[WireError]:
    """The group's record and a new member -> a ``group_conflict`` naming what differs, or
    None when they agree (records written before temperature/expert were kept agree)."""
    mine = {"task_id": traj.task_id, "init_state_id": traj.init_state_id,
            "group_size": traj.group_size, "temperature": traj.temperature,
            "expert": traj.is_expert}
    differ = [f"{k} {v!r} but the group has {record[k]!r}" for k, v in mine.items()
              if record.get(k, v) != v]
    return WireError("group_conflict", f"trajectory {traj.trajectory_id} in group "
                     f"{traj.group_id}: " + "; ".join(differ)) if differ else None


def to_group_info(group_id: bytes, record: dict[str, Any]) -> GroupInfo:
    members = record["members"]
    return GroupInfo(group_id=group_id.decode(), task_id=record["task_id"],
                     init_state_id=record["init_state_id"], group_size=record["group_size"],
                     trajectory_ids=[m[0] for m in members], successes=[m[1] for m in members],
                     policy_versions=[m[2] for m in members], created_at=record["created_at"])
