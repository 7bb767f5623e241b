"""``pushcut setup <simulator>``: the setup of a simulator that needs one, by its registry
entry's ``setup`` (``pushcut setup libero``, ``pushcut setup maniskill``)."""
from __future__ import annotations

import sys

from actors.envs.registry import env_names, env_spec, resolve


def main(cfg, args: list[str]) -> int:
    names = [n for n in env_names() if env_spec(n).setup is not None]
    if len(args) != 1 or args[0] not in names:
        print(f"usage: pushcut setup {' | '.join(names)}    (install and check a simulator)",
              file=sys.stderr)
        return 2
    return int(resolve(env_spec(args[0]).setup)(cfg, args) or 0)
