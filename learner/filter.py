"""Dynamic sampling: complete groups from the trajectory store -> the groups of one batch.

In: :class:`~learner.store.GroupInfo` of every complete, unconsumed group in the store and
the learner's current ``policy_version``. Out: up to ``algo.groups_per_batch`` groups of
trajectories, tasks balanced, plus counts of what was kept and dropped, by reason.

Rules (DESIGN.md "Dynamic sampling"):

* ``stale``: a group with any member more than ``algo.max_staleness`` versions behind the
  learner is dropped *whole*. Re-forming it from its fresh members would change the
  group's baseline and std (and leave an incomplete group, which GRPO cannot normalise);
  and actors swap weights only at group boundaries, so the members of a group share one
  policy_version and partial staleness does not happen in practice.
* ``success_low`` / ``success_high``: the group's success rate is below
  ``algo.success_lo`` or above ``algo.success_hi`` (all-fail or all-succeed groups have
  zero advantage everywhere: no learning signal, only noise in the token mean).
* Task balance: the kept groups are taken round-robin over tasks, each task's freshest
  first (newest policy_version, then newest), tasks in the order of their freshest group;
  the rest wait for the next batch. Freshest first keeps staleness low when actors
  produce faster than the learner consumes (then some data must go stale anyway); when
  they do not, every group is used before it goes stale whichever the order.

Dropped groups are marked consumed with their reason at once (so they are never re-read);
the groups of a batch are marked ``trained`` by the learner after its update
(:meth:`DynamicSamplingFilter.mark_trained`). ``quarantined``: a group whose records no
longer decode, or that the learner cannot train on (it does not collate, or its update's
loss is not finite: :meth:`DynamicSamplingFilter.quarantine`); it is never trained on nor
retried, and counted as ``dropped_quarantined``. A group the learner's declaration refuses
(common/wire/declaration.py) is set aside alone the same way under that reason
(``dropped_shape_mismatch``, ...: :meth:`DynamicSamplingFilter.set_aside`). ``pure``
selection is :func:`select_groups`.
``backlog``: the kept groups the last poll left waiting for a later batch (what the learner
holds the actors on, ``algo.max_backlog_batches``).
"""
from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from common.config.schema import AlgoConfig
from common.wire.trajectory import Trajectory, WireError

if TYPE_CHECKING:
    from learner.store import GroupInfo, TrajectoryStore

STALE, SUCCESS_LOW, SUCCESS_HIGH, MISSING = "stale", "success_low", "success_high", "missing"
TRAINED, QUARANTINED = "trained", "quarantined"
log = logging.getLogger(__name__)


def drop_reason(info: "GroupInfo", policy_version: int, cfg: AlgoConfig) -> str | None:
    """Why this group must not be trained on at ``policy_version`` (None: keep it)."""
    if policy_version - min(info.policy_versions) > cfg.max_staleness:
        return STALE
    if info.success_rate < cfg.success_lo:
        return SUCCESS_LOW
    if info.success_rate > cfg.success_hi:
        return SUCCESS_HIGH
    return None


def freshness(info: "GroupInfo") -> tuple:
    """Sort key, freshest first: newest policy_version, then newest created_at."""
    return (-min(info.policy_versions), -info.created_at, info.group_id)


def balance_tasks(infos: list["GroupInfo"], limit: int) -> list["GroupInfo"]:
    """Round-robin over tasks (each task's groups freshest first; tasks ordered by their
    freshest group) -> at most ``limit`` groups."""
    by_task: OrderedDict[str, list] = OrderedDict()
    for info in sorted(infos, key=freshness):
        by_task.setdefault(info.task_id, []).append(info)
    queues = list(by_task.values())
    chosen: list = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        chosen += [q[depth] for q in queues if depth < len(q)][:limit - len(chosen)]
        depth += 1
    return chosen


def select_groups(infos: list["GroupInfo"], policy_version: int, cfg: AlgoConfig,
                  limit: int) -> tuple[list["GroupInfo"], dict[str, str]]:
    """-> (up to ``limit`` groups to train on, {group_id: drop reason} for the rejects)."""
    dropped: dict[str, str] = {}
    keep = []
    for info in infos:
        reason = drop_reason(info, policy_version, cfg)
        if reason is None:
            keep.append(info)
        else:
            dropped[info.group_id] = reason
    return balance_tasks(keep, limit), dropped


@dataclass
class Selection:
    """One call's outcome: the groups to train on and what was dropped."""
    groups: list[list[Trajectory]]
    infos: list["GroupInfo"]
    dropped: dict[str, str] = field(default_factory=dict)   # group_id -> reason

    @property
    def group_ids(self) -> list[str]:
        return [info.group_id for info in self.infos]


class DynamicSamplingFilter:
    """The filter over a :class:`~learner.store.TrajectoryStore` (rank 0 of the learner).

    ``kept`` and ``dropped`` (Counter by reason) are cumulative over the process's life.
    ``rollouts`` counts the trajectories and successes of every complete group the filter
    has looked at, kept or dropped: the actors' unfiltered success, which the kept groups
    (inside the success window by construction) cannot show.
    """

    def __init__(self, store: "TrajectoryStore", cfg: AlgoConfig):
        self.store = store
        self.cfg = cfg
        self.kept = 0
        self.dropped: Counter[str] = Counter()
        self.rollouts: Counter[str] = Counter()
        self.backlog = 0   # kept groups left waiting by the last poll
        self._counted: set[str] = set()

    def poll(self, policy_version: int, min_groups: int | None = None,
             max_groups: int | None = None) -> Selection | None:
        """Drop (and mark) what must go; return a Selection of ``min_groups``..``max_groups``
        kept groups (defaults: ``algo.groups_per_batch`` both), or None while fewer than
        ``min_groups`` are waiting (the kept ones stay unconsumed for the next call)."""
        max_groups = max_groups or self.cfg.groups_per_batch
        min_groups = min(min_groups or self.cfg.groups_per_batch, max_groups)
        infos = self.store.complete_groups()
        self._count_rollouts(infos)
        chosen, dropped = select_groups(infos, policy_version, self.cfg, max_groups)
        groups = []
        if len(chosen) >= min_groups:   # read trajectories only when a batch can form
            for info in list(chosen):
                try:
                    members = self.store.read_group(info.group_id)
                except WireError as err:   # a record this build cannot read: never retry
                    log.warning("group %s quarantined: %s", info.group_id, err)
                    members = None
                if members is None:
                    dropped[info.group_id] = QUARANTINED
                    chosen.remove(info)
                elif len(members) != info.group_size:   # evicted between the two reads
                    dropped[info.group_id] = MISSING
                    chosen.remove(info)
                else:
                    groups.append(members)
        self._mark_dropped(dropped)
        waiting = len(infos) - len(dropped)     # the kept, this poll's batch included
        if len(chosen) < min_groups:
            self.backlog = waiting
            return None
        self.backlog = waiting - len(chosen)
        self.kept += len(chosen)
        return Selection(groups=groups, infos=chosen, dropped=dropped)

    def _count_rollouts(self, infos: list["GroupInfo"]) -> None:
        # a group waiting for a later batch comes back on the next poll: count it once
        for info in infos:
            if info.group_id not in self._counted:
                self.rollouts["trajectories"] += info.group_size
                self.rollouts["successes"] += round(info.success_rate * info.group_size)
        self._counted = {info.group_id for info in infos}

    def mark_trained(self, selection: Selection) -> None:
        self.store.mark_consumed(selection.group_ids, TRAINED)

    def quarantine(self, selection: Selection, group_ids: list[str]) -> None:
        """:meth:`set_aside` ``group_ids`` as ``quarantined``."""
        self.set_aside(selection, {g: QUARANTINED for g in group_ids})

    def set_aside(self, selection: Selection, reasons: dict[str, str]) -> None:
        """The learner does not train on ``selection``: the groups in ``reasons`` (some or
        all of its groups) are marked consumed with their reason and counted; the
        selection's other groups stay unconsumed and come back in a later poll (so ``kept``
        no longer counts any of the selection)."""
        self.kept -= len(selection.infos)
        self._mark_dropped(dict(reasons))

    def _mark_dropped(self, dropped: dict[str, str]) -> None:
        for reason in set(dropped.values()):
            self.store.mark_consumed([g for g, r in dropped.items() if r == reason], reason)
        self.dropped.update(dropped.values())

    def report(self) -> dict[str, int]:
        """{'kept': n, 'dropped_<reason>': n, 'rollout_trajectories': n,
        'rollout_successes': n} cumulative."""
        return {"kept": self.kept, **{f"dropped_{r}": n for r, n in sorted(self.dropped.items())},
                **{f"rollout_{k}": n for k, n in sorted(self.rollouts.items())}}
