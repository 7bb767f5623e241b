"""The live status of ``pushcut run`` (deploy/run.py): what the run is doing, from
the files, processes and messages it already has.

In: ``<run_dir>/learner.jsonl`` (read incrementally), the trajectory store (opened
read-only in this process once it exists), the children's states and restart counts, and
the actors' heartbeats (each actor sends them to the learner and to this process's
:class:`~common.transport.heartbeats.HealthMonitor`: its version, env steps/s). Out: a rich
table (version, env steps/s, actor versions, learner steps/s, success rate, staleness, queue
depth, filter drops, processes, restarts) for ``rich.live.Live``, a one-line form for logs
that are not a terminal, and the same figures as a dict for ``<run_dir>/run.jsonl``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from rich.table import Table

from common.config.schema import PushcutConfig
from common.transport.curve import CurveServerKeys
from common.transport.heartbeats import HealthMonitor


class LearnerLog:
    """Tail of ``learner.jsonl``: the newest start/update/wait records."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = ""
        self.last_update: dict[str, Any] | None = None
        self.last_start: dict[str, Any] | None = None
        self.last_wait: dict[str, Any] | None = None
        self.updates = 0

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
            if record.get("event") == "update":
                self.last_update = record
                self.updates += 1
            elif record.get("event") == "start":
                self.last_start = record
            elif record.get("event") == "wait":
                self.last_wait = record


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
                 heartbeats: HealthMonitor | None = None):
        self.heartbeats = heartbeats        # owned: closed by close()
        self.learner_log = LearnerLog(run_dir / "learner.jsonl")
        self.store_path = store_path
        self.run_dir = run_dir
        self.mode = mode
        self.placement: dict[str, list[int]] = {}   # role -> cores it is pinned to
        self.started = time.monotonic()
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
                restarts: dict[str, int] | None = None) -> dict[str, Any]:
        """One refresh. ``children``: name -> alive (bool) or a supervisor state
        (``running``, ``restarting``, ``failed``, ...); ``restarts``: name -> restarts so far.
        -> the figures (JSON-able; ``restarts`` holds only children restarted at least once)."""
        self.learner_log.refresh()
        u = self.learner_log.last_update or {}
        start = self.learner_log.last_start or {}
        store = self._store_stats() or {}
        # filter counters: from the newest update or, while the learner waits, wait record
        wait = self.learner_log.last_wait or {}
        counts = wait if wait.get("time", 0) > u.get("time", 0) else u
        drops = {k[len("dropped_"):]: v for k, v in counts.items() if k.startswith("dropped_")}
        # the actors' heartbeats are current; the learner's figures only as of its last update
        env_rate, actor_versions, live = u.get("env_steps_per_s"), None, u.get("actors_live")
        heard = actor_progress(self.heartbeats) if self.heartbeats is not None else None
        if heard is not None:
            rate, actor_versions, live = heard
            env_rate = env_rate if rate is None else rate
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
            "dropped": drops, "actors_live": live,
            "children": {name: state if isinstance(state, str) else
                         ("running" if state else "exited") for name, state in children.items()},
            "restarts": {name: n for name, n in (restarts or {}).items() if n},
        }

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
    if f.get("placement"):
        rows.append(("placement (cpus)", ", ".join(
            f"{n} {','.join(map(str, c))}" for n, c in f["placement"].items())))
    hint = stall_hint(f)
    if hint:
        rows.append(("hint", hint))
    for what, value in rows:
        table.add_row(what, value)
    return table


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
            + (f" | {hint}" if hint else ""))
