"""The live status of ``pushcut run`` (deploy/run.py): what the run is doing, from
the files, processes and messages it already has.

In: ``<run_dir>/learner.jsonl`` (read incrementally), the trajectory store (opened
read-only in this process once it exists), the children's states (``retired`` for one that
used up its restarts) and restart counts, and the actors' heartbeats (each actor sends them
to the learner and to this process's :class:`~common.transport.heartbeats.HealthMonitor`:
its version, env steps/s). Out: a rich table (version, env steps/s, actor versions, learner
steps/s, success rate, staleness, queue depth, filter drops, processes, restarts, retired
children, a stall and its likely cause) for ``rich.live.Live``, a one-line form for logs
that are not a terminal, and the same figures as a dict for ``<run_dir>/run.jsonl``.

The filter's counts (kept, dropped by reason) are the learner's per process life; the
status adds up the lives in ``learner.jsonl`` (each begins with a ``start`` record), so they
survive learner restarts, and a new ``pushcut run`` on the same run_dir, as of each life's
last record. A stall: no new version for ``run.stall_after`` times the median of the recent
times between versions (those within one life of the learner).
"""
from __future__ import annotations

import json
import statistics
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Optional

from rich.table import Table

from common.config.schema import PushcutConfig, RunConfig
from common.transport.curve import CurveServerKeys
from common.transport.heartbeats import HealthMonitor


# the recent times between versions a stall is measured against
STALL_INTERVALS = 20


def filter_counts(record: dict[str, Any]) -> dict[str, int]:
    """The filter's counters in a learner record: ``kept`` and ``dropped_<reason>``."""
    return {k: v for k, v in record.items() if k == "kept" or k.startswith("dropped_")}


class LearnerLog:
    """Tail of ``learner.jsonl``: the newest start/update/wait records, the filter's counts
    added up over the learner's lives, and the times between its versions."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = ""
        self.last_update: dict[str, Any] | None = None
        self.last_start: dict[str, Any] | None = None
        self.last_wait: dict[str, Any] | None = None
        self.updates = 0
        self.last_update_time: float | None = None       # of any life
        self.intervals: deque[float] = deque(maxlen=STALL_INTERVALS)
        self._carried: Counter[str] = Counter()          # the counts of the earlier lives
        self._life: dict[str, int] | None = None         # the newest counts of this life
        self.life_at_update: dict[str, int] = {}         # ... as of this life's last update
        self._life_update_time: float | None = None

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()          # an incomplete last line waits for its end
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._take(record)

    def _take(self, record: dict[str, Any]) -> None:
        event, when = record.get("event"), record.get("time")
        if event == "start":                 # a new life: its filter counts from zero
            self._carried.update(self._life or {})
            self._life, self.life_at_update, self._life_update_time = None, {}, None
            self.last_start = record
            return
        if event not in ("update", "wait", "stop"):
            return
        self._life = filter_counts(record)
        if event == "update":
            self.last_update = record
            self.updates += 1
            self.life_at_update = self._life
            if when is not None:
                if self._life_update_time is not None:
                    self.intervals.append(when - self._life_update_time)
                self._life_update_time = self.last_update_time = when
        elif event == "wait":
            self.last_wait = record

    def counts(self) -> dict[str, int] | None:
        """kept and dropped_<reason> over every life so far (None before any record)."""
        if self._life is None and not self._carried:
            return None
        total = dict(self._carried)
        for key, n in (self._life or {}).items():
            total[key] = total.get(key, 0) + n
        return total

    def waiting(self) -> bool:
        """Is the newest of the learner's records a wait for data (no update since)?"""
        wait, update = self.last_wait or {}, self.last_update or {}
        return bool(wait) and wait.get("time", 0) > update.get("time", 0)


def status_heartbeats(cfg: PushcutConfig, address: str = "tcp://127.0.0.1:*") -> HealthMonitor:
    """The status's own heartbeat socket (a free local port: see ``.address``), with the
    learner's health thresholds and CURVE keys, since the actors dial it like the learner's."""
    lc = cfg.learner
    curve = CurveServerKeys(lc.curve_secret_key, lc.curve_authorized_dir) \
        if lc.curve_secret_key else None
    return HealthMonitor(address, lc.heartbeat_timeout_s, lc.stall_s, curve=curve)


def actor_progress(heartbeats: HealthMonitor
                   ) -> Optional[tuple[Optional[float], list[int], int]]:
    """From the newest heartbeats of the actors that are not dead: (their env steps/s summed,
    None until one has a rate; their versions; how many are live). None before any actor
    was heard from."""
    heartbeats.poll(0)
    actors = [h for h in heartbeats.report() if h.state != "dead"]
    if not actors:
        return None
    rates = [h.env_steps_per_s for h in actors if h.env_steps_per_s is not None]
    return (sum(rates) if rates else None, [h.policy_version for h in actors],
            sum(h.state == "live" for h in actors))


def held_out(run_dir: Path) -> dict[str, Any]:
    """The held-out figures on disk: the start policy's (``eval_start/``: greedy and
    sampled) and the newest evaluated snapshot's (``evals/v<N>/``), each with its Wilson
    95 % interval."""
    found: dict[str, Any] = {}
    start = run_dir / "eval_start" / "eval.json"
    if start.exists():
        temps = json.loads(start.read_text())["temperatures"]
        found["start"] = {k: (v["average"], v.get("ci95")) for k, v in temps.items()}
    evals = sorted((run_dir / "evals").glob("v*/eval.json"))
    if evals:
        record = json.loads(evals[-1].read_text())
        greedy = record["temperatures"]["greedy"]
        found["latest"] = (evals[-1].parent.name, greedy["average"], greedy.get("ci95"))
    return found


def _pct(rate: float | None, ci: list[float] | None = None) -> str:
    if rate is None:
        return "–"
    return f"{100 * rate:.0f} %" + (f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]" if ci else "")


def held_out_text(f: dict[str, Any]) -> str:
    """'start 16 % [11-23] (T=1: 11 %) -> v000020 24 % [18-31]', or '–'."""
    h = f.get("held_out") or {}
    parts = []
    if "start" in h:
        greedy = h["start"].get("greedy", (None, None))
        sampled = ", ".join(f"{k}: {_pct(r)}" for k, (r, _) in h["start"].items()
                            if k != "greedy")
        parts.append(f"start {_pct(*greedy)}" + (f" ({sampled})" if sampled else ""))
    if "latest" in h:
        name, rate, ci = h["latest"]
        parts.append(f"{name} {_pct(rate, ci)}")
    return " -> ".join(parts) or "–"


class StatusBoard:
    """Collects the figures of one status refresh."""

    def __init__(self, run_dir: Path, store_path: Path, mode: str,
                 heartbeats: HealthMonitor | None = None, stall_after: float | None = None):
        self.heartbeats = heartbeats        # owned: closed by close()
        self.learner_log = LearnerLog(run_dir / "learner.jsonl")
        self.store_path = store_path
        self.run_dir = run_dir
        self.mode = mode
        self.stall_after = RunConfig().stall_after if stall_after is None else stall_after
        self.placement: dict[str, list[int]] = {}   # role -> cores it is pinned to
        self.started = time.monotonic()
        self.started_wall = time.time()   # a stall is counted from here at the earliest
        self._store = None

    def _store_stats(self) -> dict[str, Any] | None:
        if self._store is None:
            if not (self.store_path / "data.mdb").exists():
                return None
            from learner.store import TrajectoryStore
            self._store = TrajectoryStore(str(self.store_path), readonly=True)
        try:
            return self._store.stats()
        except Exception:   # the store is being resized or restarted: next refresh
            return None

    def figures(self, children: dict[str, bool | str],
                restarts: dict[str, int] | None = None,
                now: float | None = None) -> dict[str, Any]:
        """One refresh. ``children``: name -> alive (bool) or a supervisor state
        (``running``, ``restarting``, ``retired``, ...); ``restarts``: name -> restarts so
        far; ``now``: the wall clock (default: now). -> the figures (JSON-able; ``restarts``
        holds only children restarted at least once)."""
        self.learner_log.refresh()
        u = self.learner_log.last_update or {}
        start = self.learner_log.last_start or {}
        store = self._store_stats() or {}
        counts = self.learner_log.counts() or {}
        drops = {k[len("dropped_"):]: v for k, v in counts.items() if k.startswith("dropped_")}
        # the actors' heartbeats are current; the learner's figures only as of its last update
        env_rate, actor_versions, live = u.get("env_steps_per_s"), None, u.get("actors_live")
        heard = actor_progress(self.heartbeats) if self.heartbeats is not None else None
        if heard is not None:
            rate, actor_versions, live = heard
            env_rate = env_rate if rate is None else rate
        states = {name: state if isinstance(state, str) else ("running" if state else "exited")
                  for name, state in children.items()}
        return {
            "elapsed_s": round(time.monotonic() - self.started, 1), "mode": self.mode,
            "placement": self.placement,
            "policy_version": u.get("policy_version", start.get("policy_version")),
            "env_steps_per_s": env_rate, "actor_versions": actor_versions,
            "learner_steps_per_s": u.get("learner_steps_per_s"),
            "success_rate": u.get("success_rate"), "rollout_success": u.get("rollout_success"),
            "held_out": held_out(self.run_dir), "staleness_mean": u.get("staleness_mean"),
            "staleness_max": u.get("staleness_max"), "loss": u.get("loss"),
            "queue_groups": store.get("complete_groups"),
            "store_trajectories": store.get("trajectories"), "kept": counts.get("kept"),
            "dropped": drops, "actors_live": live, "children": states,
            "restarts": {name: n for name, n in (restarts or {}).items() if n},
            "retired": [name for name, state in states.items() if state == "retired"],
            "stall": self.stall(states, heard[2] if heard else (
                None if self.heartbeats is None else 0), time.time() if now is None else now),
        }

    def stall(self, states: dict[str, str], actors_live: int | None,
              now: float) -> dict[str, Any] | None:
        """{for_s, usual_s, why} when no version came for ``stall_after`` times the usual
        time between versions (None otherwise, and before two versions of one life).
        ``actors_live``: how many actors are heard from now (None: not listened to)."""
        log = self.learner_log
        if not log.intervals:
            return None
        usual = statistics.median(log.intervals)
        since = now - max(log.last_update_time or 0.0, self.started_wall)
        if since <= self.stall_after * usual:
            return None
        return {"for_s": round(since, 1), "usual_s": round(usual, 1),
                "why": stall_cause(states, log, actors_live)}

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.heartbeats is not None:
            self.heartbeats.close()
            self.heartbeats = None


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "–"
    return format(value, spec) if spec else str(value)


def render(f: dict[str, Any]) -> Table:
    table = Table(title=f"pushcut run ({f['mode']}, {f['elapsed_s']:.0f}s)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    drops = ", ".join(f"{k} {v}" for k, v in sorted(f["dropped"].items())) or "none"
    rows = [
        ("policy_version", _fmt(f["policy_version"])),
        ("env steps/s (all actors)", _fmt(f["env_steps_per_s"], ".0f")),
        ("actor versions", _fmt(f["actor_versions"])),
        ("learner steps/s", _fmt(f["learner_steps_per_s"], ".3f")),
        ("training success (actors)", _pct(f.get("rollout_success"))),
        ("held-out success", held_out_text(f)),
        ("success rate (last batch)", _fmt(f["success_rate"], ".2f")),
        ("staleness mean / max", f"{_fmt(f['staleness_mean'], '.2f')} / "
                                 f"{_fmt(f['staleness_max'])}"),
        ("queue (complete groups)", _fmt(f["queue_groups"])),
        ("filter kept / dropped", f"{_fmt(f['kept'])} / {drops}"),
        ("processes", ", ".join(f"{k}: {v}" for k, v in f["children"].items())),
        ("restarts", restarts_text(f, ", ", " ") or "none"),
    ]
    if f.get("retired"):
        rows.append(("retired", ", ".join(f["retired"])))
    if stall_text(f):
        rows.append(("stalled", stall_text(f)))
    if f.get("placement"):
        rows.append(("placement (cpus)", ", ".join(
            f"{n} {','.join(map(str, c))}" for n, c in f["placement"].items())))
    hint = stall_hint(f)
    if hint:
        rows.append(("hint", hint))
    for what, value in rows:
        table.add_row(what, value)
    return table


def stall_cause(states: dict[str, str], log: LearnerLog, actors_live: int | None) -> str:
    """Why no version comes, the first that holds: the learner or the store is down, no
    actor runs, the learner waits for data (and what the filter dropped meanwhile), else
    the update itself is slow."""
    for name, what in (("learner", ""), ("store", ": no groups reach the learner")):
        if states.get(name, "running") != "running":
            return f"{name} {states[name]}{what}"
    actors = [state for name, state in states.items() if name.startswith("actor-")]
    if actors and "running" not in actors:
        return ("all actors retired" if set(actors) == {"retired"} else
                "no actor running (" + ", ".join(sorted(set(actors))) + ")")
    if not log.waiting():
        return "the learner's update takes longer than usual"
    wait = log.last_wait or {}
    why = f"learner waiting for data: {_fmt(wait.get('queue_groups'))} complete group(s) in " \
          "the store"
    dropped = {k[len("dropped_"):]: n - log.life_at_update.get(k, 0)
               for k, n in filter_counts(wait).items() if k.startswith("dropped_")}
    dropped = {k: n for k, n in dropped.items() if n > 0}
    if dropped:
        why += (f", {sum(dropped.values())} dropped since the last version (" +
                ", ".join(f"{k} {n}" for k, n in sorted(dropped.items())) + ")")
    if actors_live == 0:
        why += ", no actor heard from"
    return why


def stall_text(f: dict[str, Any]) -> str | None:
    """'no new version for 65s (usual 8s): learner waiting for data: ...', or None."""
    stall = f.get("stall")
    if not stall:
        return None
    return (f"no new version for {stall['for_s']:.0f}s (usual {stall['usual_s']:.0f}s): "
            f"{stall['why']}")


# all-fail groups dropped, none kept, before the status calls it a stall (two batches' worth)
STALL_HINT_AFTER = 16


def stall_hint(f: dict[str, Any]) -> str | None:
    """Why the learner makes no version, when the filter's counters say so: GRPO learns
    nothing from groups whose members all fail, so a policy that never succeeds never trains."""
    low = f["dropped"].get("success_low", 0)
    if f["kept"] or low < STALL_HINT_AFTER:
        return None
    return (f"no group kept, {low} dropped with too few successes: the starting policy is "
            "too weak for GRPO; train SFT longer (sft.steps) or lower algo.temperature")


def restarts_text(f: dict[str, Any], sep: str = ",", eq: str = "=") -> str:
    """'actor-0=2,store=1' (or with other separators); '' when nothing was restarted."""
    return sep.join(f"{k}{eq}{v}" for k, v in sorted((f.get("restarts") or {}).items()))


def one_line(f: dict[str, Any]) -> str:
    drops = ",".join(f"{k}={v}" for k, v in sorted(f["dropped"].items())) or "0"
    running = sum(v == "running" for v in f["children"].values())
    hint = stall_hint(f)
    return (f"[{f['elapsed_s']:.0f}s] v{_fmt(f['policy_version'])} | env "
            f"{_fmt(f['env_steps_per_s'], '.0f')} steps/s | learner "
            f"{_fmt(f['learner_steps_per_s'], '.3f')} steps/s | training "
            f"{_pct(f.get('rollout_success'))} | held-out {held_out_text(f)} | success "
            f"{_fmt(f['success_rate'], '.2f')} | staleness {_fmt(f['staleness_mean'], '.2f')}/"
            f"{_fmt(f['staleness_max'])} | queue {_fmt(f['queue_groups'])} | kept "
            f"{_fmt(f['kept'])} dropped {drops} | {running}/{len(f['children'])} processes"
            + (f" | restarts {restarts_text(f)}" if f.get("restarts") else "")
            + (f" | retired {','.join(f['retired'])}" if f.get("retired") else "")
            + (f" | stalled: {stall_text(f)}" if f.get("stall") else "")
            + (f" | {hint}" if hint else ""))
