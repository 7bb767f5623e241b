"""The ``pushcut`` console script: ``pushcut <command> [positional ...] [key=value ...]``.

Arguments with ``=`` (or starting with ``+``/``~``) are Hydra overrides of the config
(common/config/; ``experiment=NAME`` adds configs/experiment/NAME.yaml); the others are the
command's positional arguments (``pushcut bench ingest``, ``pushcut report RUN_DIR...``).
The composed config is checked before the command starts (each value by its field's rules,
common/config/rules.py, then what deploy/checks.py checks for the command): a bad setting
is one line on stderr naming the key, its value and what is allowed, and exit status 2.
Each command lives in the module of its role and is imported only when called, so
``pushcut store`` never imports torch or MuJoCo.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from typing import Callable

# command -> ("module:function", one-line help). The function takes (cfg, positional args).
COMMANDS: dict[str, tuple[str, str]] = {
    "store": ("learner.store_process:main", "run the ZeroMQ ingest into the LMDB trajectory store"),
    "actor": ("actors.actor_process:main", "run a rollout actor against a store and a learner"),
    "learner": ("learner.learner_process:main", "run the GRPO learner (FSDP ranks, weight broadcast)"),
    "run": ("deploy.run:main", "store + learner + K actors on this machine, live status"),
    "demos": ("actors.demos:main", "record scripted expert demonstrations per task"),
    "sft": ("deploy.sft:main", "supervised warm start of a policy on demonstrations"),
    "warmstart": ("deploy.warmstart:main", "remake the shipped warm-start policy: demos, SFT, eval"),
    "eval": ("actors.evaluate:main", "held-out success per task and family, videos, JSON"),
    "evaluator": ("deploy.evaluator:main", "held-out success of a run's snapshots as they appear"),
    "bench": ("deploy.bench:main", "throughput benchmarks: ingest | ingest-bad | env | actor | learner | policy | libero | pipeline"),
    "experiment": ("deploy.experiment:main", "demos -> SFT -> eval -> RL async/sync -> evals"),
    "compare": ("deploy.results:compare_main", "two evaluations side by side, paired McNemar test"),
    "report": ("deploy.report:main", "learning curves (PNG) and tables from run directories"),
    "analyze": ("deploy.analyze:main", "strategies of successes, phases of failures, novelty"),
    "setup": ("actors.envs.setup:main", "setup libero | maniskill: install and check a simulator"),
    "keys": ("common.transport.curve:main", "generate CurveZMQ key pairs"),
    "deploy": ("deploy.ray_launch:main", "place store, learner and N actors on a Ray cluster"),
    "soak": ("deploy.soak:main", "run the whole system for a set time, report RSS and store size"),
}

USAGE = "usage: pushcut <command> [args...] [key=value ...]\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()
) + "\n\nConfig overrides use Hydra syntax, e.g. `pushcut store store.path=runs/x/store`.\n" \
    "`pushcut <command> --cfg` prints the composed config and exits."


def _resolve(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate positional arguments from Hydra overrides."""
    positional, overrides = [], []
    for arg in argv:
        (overrides if ("=" in arg or arg[:1] in "+~") else positional).append(arg)
    return positional, overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pushcut: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    from common.config import ConfigError, load_config
    from common.config.loading import to_yaml

    show_cfg = "--cfg" in rest
    positional, overrides = split_args([a for a in rest if a != "--cfg"])
    try:
        cfg = load_config(overrides)
    except ConfigError as exc:      # values refused by their fields' rules, one line each
        print("\n".join(f"pushcut {name}: {line}" for line in exc.lines), file=sys.stderr)
        return 2
    except Exception as exc:  # hydra/omegaconf errors name the bad key; the traceback does not help
        cause = str(exc.__cause__).split("\n")[0] if exc.__cause__ else ""
        text = " ".join(f"{exc} {cause}".split())     # one line, with what hydra found
        print(f"pushcut {name}: bad config: {text}", file=sys.stderr)
        return 2
    if show_cfg:
        print(to_yaml(cfg))
        return 0
    from deploy.checks import problems
    bad = problems(cfg, name)    # before anything starts: one line per bad setting, exit 2
    if bad:
        print("\n".join(f"pushcut {name}: {line}" for line in bad), file=sys.stderr)
        return 2
    func = _resolve(COMMANDS[name][0])
    # commands that start other pushcut processes forward the same overrides to them
    extra = {"overrides": overrides} if "overrides" in inspect.signature(func).parameters else {}
    result = func(cfg, positional, **extra)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
