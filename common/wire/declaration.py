"""The training declaration: what the running learner can train on, so that the store
admits only that.

The learner writes one :class:`TrainingDeclaration` when it starts and after every update
into the trajectory store's LMDB environment (the ``info`` database, key ``declaration``:
``TrajectoryStore.declare``). The ingest checks every record against it inside the
transaction that would store it, and the learner checks the groups it reads against its own
(they may have been stored before it, or under an earlier one). LMDB carries it because
both processes open that environment anyway: the write is durable and atomic, each record
meets the declaration current at its commit, and a restarted store or learner finds the
last one with nothing else to start or reconnect. Without a declaration only the record's
own contract applies (common/wire/trajectory.py).

A record is refused with one reason (``WireError.reason``):

========================  ===========================================================
``shape_mismatch``        num_bins, chunk length C, action dims D, views V, image side S
                          or proprio dims P differ from the policy's (a field left None:
                          the policy takes any, e.g. OpenVLA-OFT resizes its images)
``future_version``        ``policy_version`` above the learner's version + ``version_margin``
                          (it would never go stale and would always sort first)
``temperature_mismatch``  sampled at a temperature not within ``temperature_tolerance``
                          (relative) of one the learner trains on
========================  ===========================================================

Expert records (``policy_version == -1``) are checked for C, D, V, S and P only: they carry
no tokens, no sampling temperature and no version.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import msgpack

from common.wire.errors import WireError
from common.wire.trajectory import Trajectory

SHAPE_MISMATCH = "shape_mismatch"
FUTURE_VERSION = "future_version"
TEMPERATURE_MISMATCH = "temperature_mismatch"
DECLARATION_SCHEMA = 1
# relative: covers a float32 round trip of the temperature (~6e-8) and nothing that moves a
# log-prob measurably
TEMPERATURE_TOLERANCE = 1e-6
_OPTIONAL_INTS = ("num_views", "image_size", "proprio_dim")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingDeclaration:
    """What the learner's policy trains on, and the version it is at."""
    num_bins: int
    chunk_size: int
    action_dim: int
    num_views: Optional[int]
    image_size: Optional[int]          # square frames, S x S
    proprio_dim: Optional[int]
    temperatures: tuple[float, ...]
    policy_version: int
    version_margin: int
    temperature_tolerance: float = TEMPERATURE_TOLERANCE

    def check(self, traj: Trajectory) -> Optional[WireError]:
        """The reason ``traj`` cannot be trained on (a WireError), or None."""
        shapes = self.shape_problems(traj)
        if shapes:
            return WireError(SHAPE_MISMATCH, f"trajectory {traj.trajectory_id}: "
                             + "; ".join(shapes))
        if traj.is_expert:
            return None
        if traj.policy_version > self.policy_version + self.version_margin:
            return WireError(FUTURE_VERSION, f"trajectory {traj.trajectory_id}: policy_version "
                             f"{traj.policy_version}, the learner is at {self.policy_version} "
                             f"(at most {self.version_margin} ahead is accepted)")
        if not self.trains_at(traj.temperature):
            return WireError(TEMPERATURE_MISMATCH, f"trajectory {traj.trajectory_id}: sampled "
                             f"at temperature {traj.temperature}, the learner trains at "
                             f"{', '.join(map(str, self.temperatures))}")
        return None

    def trains_at(self, temperature: float) -> bool:
        return any(abs(temperature - t) <= self.temperature_tolerance * t
                   for t in self.temperatures)

    def shape_problems(self, traj: Trajectory) -> list[str]:
        """Each way ``traj``'s shapes differ from the policy's, as text."""
        _, views, height, width, _ = traj.images.shape
        side = None if self.image_size is None else f"{self.image_size}x{self.image_size}"
        found = [(f"num_bins {traj.num_bins}", self.num_bins, None if traj.is_expert
                  else traj.num_bins),
                 (f"chunk length {traj.chunk_size}", self.chunk_size, traj.chunk_size),
                 (f"{traj.action_dim} action dims", self.action_dim, traj.action_dim),
                 (f"{views} views", self.num_views, views),
                 (f"images {height}x{width}", side, f"{height}x{width}"),
                 (f"{traj.proprio.shape[1]} proprio dims", self.proprio_dim,
                  traj.proprio.shape[1])]
        return [f"{text}, the policy's {want}" for text, want, got in found
                if want is not None and got is not None and got != want]

    def encode(self) -> bytes:
        return msgpack.packb({"schema": DECLARATION_SCHEMA, **asdict(self)}, use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> "TrainingDeclaration":
        """-> the declaration, or WireError ``bad_value`` for anything else (another build's)."""
        try:
            msg = msgpack.unpackb(raw, raw=False)
        except Exception as exc:   # msgpack raises several classes for bad input
            raise WireError("bad_value", f"declaration: not msgpack ({exc})") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(msg, dict) or msg.get("schema") != DECLARATION_SCHEMA \
                or set(msg) - {"schema"} != names:
            raise WireError("bad_value", f"declaration: not a schema {DECLARATION_SCHEMA} "
                                         f"declaration with the fields {sorted(names)}")
        msg.pop("schema")
        if not isinstance(msg["temperatures"], list):
            raise WireError("bad_value", "declaration: temperatures must be a list")
        msg["temperatures"] = tuple(msg["temperatures"])
        declaration = cls(**msg)
        declaration.validate()
        return declaration

    def validate(self) -> None:
        """WireError ``bad_value`` unless every field is of its type and in its range."""
        ints = {"num_bins": 1, "chunk_size": 1, "action_dim": 1, "policy_version": 0,
                "version_margin": 0, **{name: 1 for name in _OPTIONAL_INTS}}
        for name, low in ints.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_INTS:
                continue
            if not _is_int(value) or value < low:
                raise WireError("bad_value", f"declaration: {name} {value!r} is not an int "
                                             f">= {low}")
        numbers = (*self.temperatures, self.temperature_tolerance)
        if not self.temperatures or not all(_is_number(t) and t >= 0 for t in numbers):
            raise WireError("bad_value", f"declaration: temperatures {self.temperatures!r} "
                                         f"and tolerance {self.temperature_tolerance!r} must "
                                         "be finite numbers >= 0, at least one temperature")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


@functools.lru_cache(maxsize=8)
def read_declaration(raw: bytes) -> Optional[TrainingDeclaration]:
    """Stored bytes -> the declaration, decoded once however many commits read it; None
    (logged once) for one this build cannot read, so that the store keeps its schema-only
    checks rather than refusing everything."""
    try:
        return TrainingDeclaration.decode(raw)
    except WireError as err:
        log.warning("ignoring the learner's declaration: %s", err)
        return None
