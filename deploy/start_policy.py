"""Before RL: the start policy's held-out success, greedy and sampled, and the sampling
temperature RL will use (part of ``pushcut run``, deploy/run.py).

GRPO learns only from groups that mix successes and failures; a policy that succeeds
greedily but never when sampled at ``algo.temperature`` would leave the learner waiting at
version 0. So ``pushcut run`` first evaluates the start policy on the held-out initial states
(``run.eval_episodes`` per task, greedy and at ``algo.temperature``), and:

* keeps ``algo.temperature`` when sampled success is at least ``run.min_sampled_ratio`` of
  greedy success;
* else lowers it (x0.6 per try, at most ``run.temperature_tries`` tries) until it is;
* stops with the reason when the policy never succeeds, greedy or sampled.

In: the start checkpoint. Out: ``<run_dir>/eval_start/eval.json`` (the figures the status
and ``pushcut report`` compare later evaluations with) and the temperature to use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from common.config.schema import PushcutConfig
from deploy.roles import config_overrides, override, run_step

LOWER_BY = 0.6


class StartPolicyTooWeak(RuntimeError):
    """The start policy never succeeds: RL from it would wait for ever."""


def evaluate_alone(cfg: PushcutConfig, checkpoint: str, out: Path, temperatures: list[float],
                   episodes_per_task: int, log_dir: Path, console: Any, signals: Any,
                   launcher: str) -> None:
    """``pushcut eval`` of ``checkpoint`` into ``out`` as a preparation step that has the
    machine to itself: its simulators run in subprocesses, so they spread over every core
    while the policy infers."""
    run_step("eval_start", "eval", [
        checkpoint, *config_overrides(cfg), override("eval.out", str(out)),
        override("eval.temperatures", temperatures), override("eval.videos_per_task", 0),
        override("eval.episodes_per_task", episodes_per_task),
        override("eval.subprocess_envs", True)], log_dir, console, signals, launcher)


def rates(path: Path) -> dict[float, float]:
    """eval.json -> {temperature: average success} (0.0 = greedy)."""
    results = json.loads((path / "eval.json").read_text())
    return {float(s["temperature"]): float(s["average"])
            for s in results["temperatures"].values()}


def choose_temperature(found: dict[float, float], wanted: float, ratio: float
                       ) -> float | None:
    """The highest evaluated temperature <= ``wanted`` whose sampled success is at least
    ``ratio`` x greedy (and above 0); None when none is."""
    greedy = found.get(0.0, 0.0)
    good = [t for t, rate in found.items()
            if 0 < t <= wanted and rate > 0 and rate >= ratio * greedy]
    return max(good) if good else None


def measure(cfg: PushcutConfig, out: Path,
            evaluate: Callable[[list[float], Path], None]) -> tuple[float, str]:
    """Evaluate (``evaluate(temperatures, out_dir)`` writes ``out_dir/eval.json``), lower the
    temperature while needed; -> (temperature, one line that says what was measured)."""
    wanted = float(cfg.algo.temperature)
    if not (out / "eval.json").exists():
        evaluate([0.0, wanted], out)
    found = rates(out)
    t = wanted
    for i in range(cfg.run.temperature_tries):
        if choose_temperature(found, wanted, cfg.run.min_sampled_ratio) is not None:
            break
        t = round(t * LOWER_BY, 3)
        extra = out.parent / f"{out.name}_T{t:g}"
        if not (extra / "eval.json").exists():
            evaluate([t], extra)
        found.update(rates(extra))
    greedy = found.get(0.0, 0.0)
    chosen = choose_temperature(found, wanted, cfg.run.min_sampled_ratio)
    sampled = ", ".join(f"{100 * r:.0f} % at T={k:g}" for k, r in sorted(found.items()) if k)
    line = f"start policy: held-out {100 * greedy:.0f} % greedy, sampled {sampled}"
    if chosen is None:
        if greedy == 0 and not any(found.values()):
            raise StartPolicyTooWeak(
                f"{line}: it never succeeds, so GRPO has no group to learn from; train SFT "
                "longer (sft.steps) or on more demos (demos.per_task)")
        chosen = max((k for k in found if k), key=lambda k: (found[k], k))
        return chosen, f"{line}; using T={chosen:g}, the best sampled success"
    if chosen != wanted:
        return chosen, (f"{line}; T={wanted:g} samples too far from greedy: using "
                        f"algo.temperature={chosen:g}")
    return chosen, f"{line}; using algo.temperature={chosen:g}"
