"""Every ``pushcut`` command and every ``pushcut bench`` benchmark names a function that
exists: the registries hold "module:function" strings, resolved only when called, so a
renamed module or function would otherwise surface only when someone runs that command."""
from __future__ import annotations

import pytest

from deploy.bench import BENCHMARKS
from deploy.cli import COMMANDS, _resolve

TARGETS = {**{f"pushcut {name}": target for name, (target, _) in COMMANDS.items()},
           **{f"pushcut bench {name}": target for name, (target, _) in BENCHMARKS.items()}}


@pytest.mark.parametrize("command", sorted(TARGETS))
def test_the_target_imports_and_is_callable(command):
    assert callable(_resolve(TARGETS[command])), TARGETS[command]
