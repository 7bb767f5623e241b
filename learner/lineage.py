"""Version lineage: a ``policy_version`` names one set of weights, for the life of a
checkpoint directory.

Why: the learner publishes every version at once but checkpoints only every
``learner.checkpoint_every`` versions, so a learner killed between checkpoints resumes from
weights older than the ones it last published. Resumed at its checkpoint's number (c) it
would publish c+1, c+2, ... again with other weights: actors that kept the lost weights of
a higher number never fetch the new ones (by number they are not newer), records of two
lineages share numbers, staleness goes negative and groups sampled from weights that no
longer exist are trained on as if they were fresh.

The rule: before it publishes a version the learner durably records it as the highest
version it ever published (``<learner.checkpoint_dir>/lineage.json``, written to a
temporary file, fsynced and renamed into place, so a crash leaves the old record or the
new one). On resume from checkpoint c with h published, h > c, versions c+1..h are
*fenced* (lost with the weights they named; the range is recorded too) and the resumed
weights are published as h+1: a number no actor holds, higher than any an actor can hold,
so every actor fetches it by its ordinary rule (take any newer version). Without a
checkpoint, 0..h are fenced. The filter reads the store through :class:`FencedStore`: in
the same read that lists the complete groups (a group completing between two reads would
slip through), a group with a member of a fenced version is marked consumed ``fenced`` and
left out: never trained on, counted as ``dropped_fenced``. Since no actor can hold a
version above h, staleness (the learner's version minus a record's) is never negative for
records of the learner's own actors.

Chosen over a lineage epoch on every trajectory record and announcement (Kafka's producer
epoch) because it needs no change to the record, the weight protocol, the store or the
actors, costs one small fsync per version, and keeps the versions a total order (staleness
stays a difference of numbers). The price: after a lossy resume the version jumps by the
lost count, so the resumed learner judges records of versions <= c staler by that much than
they are (they may be dropped as ``stale`` sooner), and ``learner.max_versions``, an absolute
number, is reached that many updates sooner. A checkpoint directory written before this
record existed starts one at its newest checkpoint's version.

In: ``learner.checkpoint_dir``, the checkpoint's version on resume, each version before it
is published, the store's complete groups (read only once some version is fenced). Out: the
version to resume at, ``lineage.json``, ``fenced`` consumption marks. Used by
learner/learner_process.py (resume) and learner/learner.py (publish, fence).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from learner.checkpoint import fsync_dir

if TYPE_CHECKING:
    from learner.store import GroupInfo, TrajectoryStore

LINEAGE_FILE = "lineage.json"
FENCED = "fenced"          # consumption mark and drop reason of groups of lost versions
log = logging.getLogger(__name__)


class LineageError(ValueError):
    """``lineage.json`` exists but is not a record this module wrote."""


def resume_version(checkpoint_version: int | None, published: int | None
                   ) -> tuple[int, tuple[int, int] | None]:
    """The resume rule -> (the version the resumed weights are published as, the inclusive
    range of versions lost with the weights they named, or None).

    ``checkpoint_version``: the checkpoint resumed from (None: none, initial weights);
    ``published``: the highest version ever published (None: nothing recorded)."""
    start = 0 if checkpoint_version is None else checkpoint_version
    if published is None or (checkpoint_version is not None and published <= start):
        return start, None
    # without a checkpoint even version 0 is lost: fresh weights are not the same twice
    first_lost = 0 if checkpoint_version is None else start + 1
    return published + 1, (first_lost, published)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _write_durably(path: Path, text: str) -> None:
    """``path`` holds ``text`` or its previous content, whatever happens (temporary file,
    fsync, rename, fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _parse(path: Path, text: str) -> tuple[int | None, list[tuple[int, int]]]:
    def bad(why: str) -> LineageError:
        return LineageError(f"{path}: {why}; it is pushcut learner's record of the versions "
                            "it published (move it away only to start a new run)")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != {"published", "fenced"}:
        raise bad("expected exactly the keys published and fenced")
    published, fenced = obj["published"], obj["fenced"]

    def is_int(v: object) -> bool:
        return type(v) is int and v >= 0
    if published is not None and not is_int(published):
        raise bad(f"published {published!r} is not a version")
    if not isinstance(fenced, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(map(is_int, r)) and r[0] <= r[1]
            and published is not None and r[1] <= published for r in fenced):
        raise bad(f"fenced {fenced!r} is not a list of [first, last] published versions")
    return published, [tuple(r) for r in fenced]


@dataclass
class Lineage:
    """The durable record of one checkpoint directory's versions (see the module
    docstring). Rank 0 of the learner owns it; nothing else writes it."""
    path: Path
    published: int | None = None          # highest version ever published
    fenced: list[tuple[int, int]] = field(default_factory=list)   # lost, inclusive ranges

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> "Lineage":
        """The record in ``checkpoint_dir`` (an empty one if there is none yet); a file that
        is not a record raises :class:`LineageError`."""
        path = Path(checkpoint_dir) / LINEAGE_FILE
        if not path.exists():
            return cls(path)
        return cls(path, *_parse(path, path.read_text()))

    def save(self) -> None:
        _write_durably(self.path, json.dumps(
            {"published": self.published, "fenced": [list(r) for r in self.fenced]}))

    def resume(self, checkpoint_version: int | None) -> int:
        """Apply :func:`resume_version`, recording the lost range durably (before anything
        is published) -> the version to publish the resumed weights as."""
        start, lost = resume_version(checkpoint_version, self.published)
        if lost is not None:
            self.fenced = _merge([*self.fenced, lost])
            self.save()
            span = str(lost[0]) if lost[0] == lost[1] else f"{lost[0]}-{lost[1]}"
            log.warning("lost with the weights they named, published after checkpoint %s: "
                        "version(s) %s, fenced; the resumed weights are version %d",
                        checkpoint_version, span, start)
        return start

    def record_published(self, version: int) -> None:
        """Call before publishing ``version``: it is durable as published when this returns."""
        if self.published is None or version > self.published:
            self.published = version
            self.save()

    def is_fenced(self, version: int) -> bool:
        """Was ``version`` lost with the weights it named?"""
        return any(lo <= version <= hi for lo, hi in self.fenced)


class FencedStore:
    """A :class:`~learner.store.TrajectoryStore` as the filter reads it: the groups of fenced
    versions are marked consumed ``fenced`` (and passed to ``on_fenced``) as
    :meth:`complete_groups` lists them, and left out. Everything else is the store's."""

    def __init__(self, store: "TrajectoryStore", lineage: Lineage,
                 on_fenced: Callable[[list[str]], None] = lambda ids: None):
        self._store, self._lineage, self._on_fenced = store, lineage, on_fenced

    def complete_groups(self, include_consumed: bool = False) -> list["GroupInfo"]:
        infos = self._store.complete_groups(include_consumed)
        if include_consumed or not self._lineage.fenced:
            return infos
        lost = {info.group_id for info in infos
                if any(self._lineage.is_fenced(v) for v in set(info.policy_versions))}
        if lost:
            self._store.mark_consumed(lost, FENCED)
            self._on_fenced(sorted(lost))
        return [info for info in infos if info.group_id not in lost]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
