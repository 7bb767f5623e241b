"""``pushcut analyze EVAL [EVAL ...]``: how episodes succeeded and where they failed.

In: evaluation directories (or their eval.json) whose episodes carry behaviour fingerprints
(``pushcut eval`` on the tabletop suite: actors/envs/tabletop/fingerprint.py); the greedy
evaluation of each. Out, printed as Markdown: per evaluation and family, the successes by
strategy (``grasp_and_place``, ``push``, ``other``) and the failures by the phase they ended
in (``never_reached``, ``grasp_failed``, ``timed_out``, ``misplaced``, ``dropped``); with two
or more evaluations, the successes of each later one whose strategy the first never showed
on that task (``novel``: behaviour the earlier policy, e.g. SFT, did not have).

    pushcut analyze runs/exp_onedemo/eval_sft runs/exp_onedemo/rl_async/evals/v000230
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from actors.envs.tabletop.fingerprint import PHASES, STRATEGIES
from deploy.results import read_outcomes


def episodes(path: Path) -> list[dict]:
    """An evaluation -> one row per episode: task, family, success, fingerprint.
    ValueError when it kept no fingerprints (evaluated without them)."""
    summary, _ = read_outcomes(path)
    rows = []
    for task_id, row in summary["per_task"].items():
        prints = row.get("fingerprints")
        if not prints:
            raise ValueError(f"{path}: {task_id} has no fingerprints (evaluate it again with "
                             "pushcut eval on the tabletop suite)")
        rows += [{"task": task_id, "family": row["family"], "success": bool(ok), **fp}
                 for ok, fp in zip(row["outcomes"], prints)]
    return rows


def breakdown(rows: list[dict]) -> dict[str, dict[str, Counter]]:
    """-> {family (and "all"): {"strategy": Counter over successes, "phase": Counter over
    failures}}."""
    out: dict[str, dict[str, Counter]] = defaultdict(lambda: {"strategy": Counter(),
                                                              "phase": Counter()})
    for r in rows:
        for key in (r["family"], "all"):
            if r["success"]:
                out[key]["strategy"][r["strategy"]] += 1
            else:
                out[key]["phase"][r["failure_phase"]] += 1
    return dict(out)


def novel(reference: list[dict], rows: list[dict]) -> Counter:
    """Successes in ``rows`` whose strategy ``reference`` never showed on the same task (in
    any episode, success or not), counted per family and "all"."""
    seen = defaultdict(set)
    for r in reference:
        seen[r["task"]].add(r["strategy"])
    count: Counter = Counter()
    for r in rows:
        if r["success"] and r["strategy"] not in seen[r["task"]]:
            count[r["family"]] += 1
            count["all"] += 1
    return count


def _share(counter: Counter, key: str) -> str:
    total = sum(counter.values())
    return f"{counter[key]} ({100 * counter[key] / total:.0f} %)" if total else "-"


def table(name: str, parts: dict[str, dict[str, Counter]], fresh: Counter | None) -> str:
    keys = [*sorted(k for k in parts if k != "all"), "all"]
    head = ["family", "successes", *STRATEGIES, "failures", *PHASES]
    head += ["novel"] if fresh is not None else []
    lines = [f"**{name}**", "", "| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(head) - 1)]
    for k in keys:
        s, f = parts[k]["strategy"], parts[k]["phase"]
        cells = [k, str(sum(s.values())), *[_share(s, x) for x in STRATEGIES],
                 str(sum(f.values())), *[_share(f, x) for x in PHASES]]
        cells += [str(fresh[k])] if fresh is not None else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def analyze_text(paths: list[Path]) -> str:
    runs = [episodes(p) for p in paths]
    out = []
    for i, (path, rows) in enumerate(zip(paths, runs)):
        fresh = novel(runs[0], rows) if i > 0 else None
        out.append(table(str(path), breakdown(rows), fresh))
    return "\n\n".join(out)


def main(cfg, args: list[str]) -> int:
    """``pushcut analyze EVAL [EVAL ...]``."""
    if not args:
        print("usage: pushcut analyze EVAL [EVAL ...]  (directories with eval.json)")
        return 2
    try:
        print(analyze_text([Path(a) for a in args]))
    except (OSError, ValueError, KeyError) as exc:
        print(f"pushcut analyze: {exc}")
        return 2
    return 0
