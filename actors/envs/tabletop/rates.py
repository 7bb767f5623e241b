"""Success rates of the tabletop suite's scripted expert and of a uniform random policy,
per task, on training and held-out initial states (the figures in the README, "The built-in tabletop suite").

Run: ``python -m actors.envs.tabletop.rates --episodes 20 --noise 0 0.3``. Unrendered.
"""
from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from actors.envs.tabletop.env import TabletopEnv
from actors.envs.tabletop.expert import Expert
from common.config.envs import TabletopEnvConfig


def episode(env: TabletopEnv, task_id: str, init_state_id: int, policy) -> tuple[bool, int]:
    """Run ``policy() -> action [7]`` from (task, init state) to the end: (success, steps)."""
    env.reset(task_id, init_state_id)
    while True:
        result = env.step(policy(), render=False)
        if result.done:
            return result.success, env.steps


def rates(episodes: int, noises: list[float], random_episodes: int) -> list[dict]:
    env = TabletopEnv(TabletopEnvConfig(image_size=16))   # reset() renders; keep that cheap
    rng = np.random.default_rng(0)
    rows = []
    try:
        for spec in track(env.tasks(), description="tasks"):
            row = {"task_id": spec.task_id, "max_steps": spec.max_steps}
            for split, ids in (("train", env.train_init_state_ids(spec.task_id)[:episodes]),
                               ("heldout", env.heldout_init_state_ids(spec.task_id)[:episodes])):
                for noise in noises:
                    runs = [episode(env, spec.task_id, i, Expert(env, noise, seed=i).act)
                            for i in ids]
                    row[f"expert {noise:g} {split}"] = np.mean([ok for ok, _ in runs])
                    if noise == noises[0] and split == "train":
                        row["expert length"] = np.mean([n for _, n in runs])
            ids = env.train_init_state_ids(spec.task_id)[:random_episodes]
            row["random"] = np.mean([episode(env, spec.task_id, i,
                                             lambda: rng.uniform(-1, 1, 7))[0] for i in ids])
            rows.append(row)
    finally:
        env.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20, help="init states per split")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0])
    parser.add_argument("--random-episodes", type=int, default=10)
    args = parser.parse_args()
    rows = rates(args.episodes, args.noise, args.random_episodes)
    table = Table(title=f"success rates ({args.episodes} init states per split, "
                        f"random policy on {args.random_episodes} training states)")
    for col in rows[0]:
        table.add_column(col, justify="left" if col == "task_id" else "right")
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
