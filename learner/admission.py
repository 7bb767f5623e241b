"""What the learner trains on: its :class:`~common.wire.declaration.TrainingDeclaration`
and the screen of the groups it reads.

In: the policy (rank 0's template), the config and the current ``policy_version``; a
:class:`~learner.filter.Selection`. Out: the declaration the learner writes into the store
(learner/learner.py, at start and after every update), and for a selection the groups that
must be set aside, each alone with its own reason: the declaration's (``shape_mismatch``,
``future_version``, ``temperature_mismatch``: records stored before the declaration, or
under an earlier one) or ``quarantined`` (the group does not collate on its own). A group is
judged by itself, never by its place in the batch, so the valid groups around it are trained
on in the next batch.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from common.config.schema import PushcutConfig
from common.wire.declaration import SHAPE_MISMATCH, TrainingDeclaration
from common.wire.errors import WireError
from common.wire.trajectory import Trajectory
from learner.batch import collate
from learner.filter import QUARANTINED, Selection

_OBSERVATION = ("num_views", "image_size", "proprio_dim")


def observation_shape(policy: Any) -> tuple[Optional[int], Optional[int], Optional[int]]:
    """(views, image side, proprio dims) the policy takes: a config naming all three (the
    tiny VLA, whose ``prepare_inputs`` refuses anything else) fixes them; otherwise none is
    fixed (OpenVLA-OFT resizes its images and takes no proprio)."""
    config = getattr(policy, "config", None)
    if all(isinstance(getattr(config, name, None), int) for name in _OBSERVATION):
        return tuple(int(getattr(config, name)) for name in _OBSERVATION)
    return None, None, None


def training_declaration(policy: Any, cfg: PushcutConfig, policy_version: int
                         ) -> TrainingDeclaration:
    """The declaration of a learner training ``policy`` at ``algo.temperature``. The
    version margin is ``learner.checkpoint_every``: a learner resumed from its newest
    checkpoint is at most that many versions behind weights it published before."""
    views, side, proprio = observation_shape(policy)
    return TrainingDeclaration(
        num_bins=int(policy.num_bins), chunk_size=int(policy.chunk_size),
        action_dim=int(policy.action_dim), num_views=views, image_size=side,
        proprio_dim=proprio, temperatures=(float(cfg.algo.temperature),),
        policy_version=policy_version, version_margin=cfg.learner.checkpoint_every)


def _group_problem(group: list[Trajectory], declaration: TrainingDeclaration,
                   adv_eps: float) -> Optional[WireError]:
    for traj in group:
        problem = declaration.check(traj)
        if problem is not None:
            return problem
    try:
        collate([group], adv_eps)
    except Exception as exc:   # whatever collate refuses, training would crash on
        return WireError(QUARANTINED, f"{type(exc).__name__}: {exc}")
    return None


def untrainable_groups(selection: Selection, declaration: TrainingDeclaration,
                       adv_eps: float) -> dict[str, WireError]:
    """The groups of ``selection`` to set aside -> {group_id: WireError whose reason is the
    consumption reason}. Where the policy leaves an observation dimension open, the groups
    must still agree on it to share a batch (collate concatenates them): those outside the
    batch's most common observation shape are set aside as ``shape_mismatch``."""
    bad: dict[str, WireError] = {}
    shapes: dict[str, tuple] = {}
    for info, group in zip(selection.infos, selection.groups):
        problem = _group_problem(group, declaration, adv_eps)
        if problem is not None:
            bad[info.group_id] = problem
        else:
            shapes[info.group_id] = (group[0].images.shape[1:], group[0].proprio.shape[1:])
    if len(set(shapes.values())) > 1:
        common = Counter(shapes.values()).most_common(1)[0][0]
        for group_id, shape in shapes.items():
            if shape != common:
                bad[group_id] = WireError(SHAPE_MISMATCH, f"group {group_id}: images and "
                                          f"proprio {shape}, the batch's {common}")
    return bad
