"""``pushcut analyze [DEMOS] EVAL [EVAL ...]``: how episodes succeeded and where they failed.

In: evaluation directories (or their eval.json) whose episodes carry behaviour fingerprints
(``pushcut eval`` on the tabletop suite: actors/envs/tabletop/fingerprint.py), the greedy
evaluation of each; optionally first a demonstration dataset (``pushcut demos``, whose
index lines carry the demos' fingerprints). Out, printed as Markdown: per evaluation and
family, the successes by strategy (``grasp_and_place``, ``push``, ``other``) and the failures
by the phase they ended in (``never_reached``, ``grasp_failed``, ``timed_out``,
``misplaced``, ``dropped``); and against the reference (the demos if given, else the first
evaluation) ``novel``: the successes whose strategy the reference never showed on that task.
With demos also ``dtw_mm``: the median over successes of the distance of the fingertip's
path to the nearest demo of its task (dynamic time warping over the paths' points, mean
mm per aligned point: how far the behaviour moved from the demonstrated one).

    pushcut analyze runs/exp_onedemo/demos runs/exp_onedemo/eval_sft runs/exp_onedemo/rl_async/evals/v000230
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from actors.envs.tabletop.fingerprint import PHASES, STRATEGIES
from common.dataset import read_index
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


def demo_rows(path: Path) -> list[dict]:
    """A demonstration dataset -> one row per demo: task, strategy, path (ValueError when
    its demos were recorded without fingerprints)."""
    rows = []
    for line in read_index(path):
        if "fingerprint" not in line:
            raise ValueError(f"{path}: demo {line['trajectory_id']} has no fingerprint "
                             "(record the demos again with pushcut demos)")
        rows.append({"task": line["task_id"], "success": True, **line["fingerprint"]})
    return rows


def dtw(a: np.ndarray, b: np.ndarray) -> float:
    """Dynamic time warping between paths a [n, 3] and b [m, 3] -> the cost of the best
    monotone alignment (the sum of Euclidean distances of aligned points) / max(n, m): 0 for a
    path and any time-stretched copy, the offset for two equally long parallel paths."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            acc[i, j] = d[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return float(acc[-1, -1] / max(len(a), len(b)))


def demo_distance(demos: list[dict], rows: list[dict]) -> dict[str, float]:
    """Median over the successes in ``rows`` (per family and "all") of the DTW distance of
    their path to the nearest demo path of the same task (mm per point)."""
    paths = defaultdict(list)
    for r in demos:
        paths[r["task"]].append(np.asarray(r["path_mm"], float))
    found = defaultdict(list)
    for r in rows:
        if r["success"] and paths[r["task"]]:
            own = np.asarray(r["path_mm"], float)
            best = min(dtw(own, p) for p in paths[r["task"]])
            found[r["family"]].append(best)
            found["all"].append(best)
    return {k: float(np.median(v)) for k, v in found.items()}


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


def table(name: str, parts: dict[str, dict[str, Counter]], fresh: Counter | None,
          distance: dict[str, float] | None = None) -> str:
    keys = [*sorted(k for k in parts if k != "all"), "all"]
    head = ["family", "successes", *STRATEGIES, "failures", *PHASES]
    head += ["novel"] if fresh is not None else []
    head += ["dtw_mm"] if distance is not None else []
    lines = [f"**{name}**", "", "| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(head) - 1)]
    for k in keys:
        s, f = parts[k]["strategy"], parts[k]["phase"]
        cells = [k, str(sum(s.values())), *[_share(s, x) for x in STRATEGIES],
                 str(sum(f.values())), *[_share(f, x) for x in PHASES]]
        cells += [str(fresh[k])] if fresh is not None else []
        cells += [f"{distance[k]:.0f}" if k in distance else "-"] if distance is not None else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def analyze_text(paths: list[Path]) -> str:
    """The tables; a first path holding a dataset (index.jsonl) is the demos."""
    demos = demo_rows(paths[0]) if (paths[0] / "index.jsonl").exists() else None
    evals = paths[1:] if demos is not None else paths
    if not evals:
        raise ValueError("no evaluation given after the demos")
    runs = [episodes(p) for p in evals]
    out = []
    for i, (path, rows) in enumerate(zip(evals, runs)):
        reference = demos if demos is not None else (runs[0] if i > 0 else None)
        fresh = novel(reference, rows) if reference is not None else None
        distance = demo_distance(demos, rows) if demos is not None else None
        out.append(table(str(path), breakdown(rows), fresh, distance))
    return "\n\n".join(out)


def main(cfg, args: list[str]) -> int:
    """``pushcut analyze [DEMOS] EVAL [EVAL ...]``."""
    if not args:
        print("usage: pushcut analyze [DEMOS] EVAL [EVAL ...]  (a pushcut demos dataset, "
              "directories with eval.json)")
        return 2
    try:
        print(analyze_text([Path(a) for a in args]))
    except (OSError, ValueError, KeyError) as exc:
        print(f"pushcut analyze: {exc}")
        return 2
    return 0
