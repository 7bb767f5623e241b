"""The shape of the house: the import contracts of pyproject.toml hold (and break when an
import goes against the data flow), no package names another by string, files stay short,
and the product's text carries no working labels or private paths."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "actors", "learner", "deploy")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def test_import_contracts_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("edit, contract", [
    (("common/metrics.py", "import actors.actor\n"), "common/ is the floor"),
    (("actors/video.py", "import learner.store\n"), "never import each other"),
    (("learner/store.py", "def _f():\n    import deploy.cli\n"), "launchers"),
    (("learner/checkpoint.py", "import learner.learner_process\n"), "no import cycle"),
])
def test_import_contracts_break_on_a_wrong_import(tmp_path, edit, contract):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path, line = edit
    with open(tmp_path / path, "a") as f:
        f.write("\n" + line)
    result = lint(tmp_path)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout


def _module_strings(path: Path) -> list[str]:
    """String constants that name a module of an upper package (``pkg.mod`` or ``pkg.mod:fn``)."""
    pattern = re.compile(r"^(actors|learner|deploy)(\.[a-z_]\w*)+(:\w+)?$")
    tree = ast.parse(path.read_text())
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and pattern.match(node.value)]


def test_common_names_no_upper_module_even_by_string():
    found = {str(p.relative_to(ROOT)): s for p in sources("common") if (s := _module_strings(p))}
    assert found == {}


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in sources(*PACKAGES, "tests")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_product_text_has_no_working_labels_or_private_paths():
    labels = re.compile(r"/tmp/|runs/s\d|\bsession\b|\bissue #?\d+|\bhelper agent", re.I)
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "configs").rglob("*.yaml"),
             *sources(*PACKAGES)]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if labels.search(line)]
    assert hits == []


def test_every_command_and_benchmark_has_a_section_in_the_docs():
    from deploy.bench import BENCHMARKS
    from deploy.cli import COMMANDS
    text = (ROOT / "docs" / "commands.md").read_text()
    missing = [f"pushcut {name}" for name in COMMANDS if f"## `pushcut {name}`" not in text]
    missing += [f"pushcut bench {name}" for name in BENCHMARKS
                if f"### `pushcut bench {name}`" not in text]
    assert missing == []
