"""`pushcut setup maniskill`: ManiSkill3 on SAPIEN 3 in its own interpreter, with a Vulkan
driver that renders on a CPU, checked by rendering one frame.

In:  PyPI (through pip) and Debian's archive (six pinned .deb files, each sha256-checked).
Out: under ``$PUSHCUT_CACHE_DIR/maniskill`` (default ``~/.cache/pushcut/maniskill``):
     ``venv/`` with mani-skill 3.0.1, sapien 3.0.3, numpy 1.26.4, the torch of pushcut's own
     environment and the few packages pushcut's env side imports; ``mesa/``, Mesa 25.0.7's
     lavapipe (Vulkan on the CPU) unpacked from bookworm-backports, used by that interpreter
     only (``VK_ICD_FILENAMES``, ``LD_LIBRARY_PATH``).
Launch: ``pushcut setup maniskill``. Idempotent: a second run verifies and renders again.

Why a second interpreter: mani-skill 3.0.1 pulls mplib 0.1.1, whose ``mplib.Planner()``
segfaults under numpy 2 (pushcut's environment has numpy 2.4), and was released against
gymnasium 0.29 (pushcut uses 1.x); sharing one environment would downgrade both for
everything else, torch and MuJoCo included. Env workers
are already separate processes speaking msgpack over ZeroMQ, so the simulator's process runs
this interpreter, with pushcut's own code on its ``PYTHONPATH``.

Why a private Mesa: Debian 12's lavapipe (Mesa 22.3.6) fails in SAPIEN with "failed to find
a rendering device"; 25.0.7 from bookworm-backports renders. Installing it system-wide would
also replace the OpenGL/EGL Mesa that MuJoCo renders with, so it is unpacked beside the venv.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from actors.envs.libero_setup import SetupError, cache_dir, run_pip

MANISKILL = "mani-skill==3.0.1"
SAPIEN = "sapien==3.0.3"
NUMPY = "numpy==1.26.4"          # mplib 0.1.1 segfaults in mplib.Planner() under numpy 2
GYMNASIUM = "gymnasium==0.29.1"  # the gymnasium mani-skill 3.0.1 was released against
# pushcut's env side (env worker, demos, config) imports these: same versions as here
SHARED = ("pyzmq", "msgpack", "hydra-core", "omegaconf", "rich", "psutil", "pyyaml",
          "imageio", "tqdm")
USAGE = "usage: pushcut setup maniskill    (ManiSkill3 + SAPIEN 3 in their own interpreter)"

# Debian's pool keeps a backport until a newer one replaces it; then these pins must move
DEBIAN = ("http://deb.debian.org/debian/",)
# (pool path, sha256): lavapipe 25.0.7 and what it needs newer than bookworm has
DEBS = (
    ("pool/main/m/mesa/mesa-vulkan-drivers_25.0.7-2~bpo12+1_amd64.deb",
     "3899f1800424c60a05df5d6913076a526ca8fdbabec43672cd397563d1ca3263"),
    ("pool/main/m/mesa/mesa-libgallium_25.0.7-2~bpo12+1_amd64.deb",
     "6c6f0aa43c5d285116bd32ebce7ede957afd8bbdc8b897c9aae6f80069bfb8d4"),
    ("pool/main/libd/libdrm/libdrm2_2.4.123-1~bpo12+1_amd64.deb",
     "9cc2f341964286295124a32d3625edb76730500625e54a1e682761f883064d7b"),
    ("pool/main/libd/libdrm/libdrm-amdgpu1_2.4.123-1~bpo12+1_amd64.deb",
     "334e2ae389af0e9cb607c2ccfbbf7ae9feb34131ff998550baeffeeae6cda296"),
    ("pool/main/libd/libdrm/libdrm-intel1_2.4.123-1~bpo12+1_amd64.deb",
     "44a91fb2a2512bcebaf6c8dff3e02c4199763975180cf9e1c53175cb42c629ff"),
    ("pool/main/v/vulkan-loader/libvulkan1_1.3.239.0-1_amd64.deb",
     "622f28b807ba55a1f5ad1622ff83aa2c5b11fedbec074850e04c10a8f28b43d3"),
)
# the system libraries lavapipe links to (Debian 12 main; setup.sh's Mesa brings most)
SYSTEM_PACKAGES = ("libllvm15", "libsensors5", "libpciaccess0", "libelf1", "libwayland-client0",
                   "libx11-xcb1", "libxcb-dri3-0", "libxcb-present0", "libxcb-randr0",
                   "libxcb-shm0", "libxcb-sync1", "libxcb-xfixes0", "libxshmfence1")
LIB_DIR = "usr/lib/x86_64-linux-gnu"

# one frame of PickCube from the ManiSkill interpreter: the setup's last check
RENDER_CHECK = """
import gymnasium as gym, mani_skill.envs, numpy as np
env = gym.make("PickCube-v1", obs_mode="rgb", render_backend="cpu",
               sensor_configs=dict(width=64, height=64))
obs, _ = env.reset(seed=0)
rgb = np.asarray(obs["sensor_data"]["base_camera"]["rgb"])
env.close()
assert rgb.std() > 5, f"a blank frame (std {rgb.std():.1f})"
print("frame", "x".join(map(str, rgb.shape[1:3])))
"""


def root() -> Path:
    return cache_dir("maniskill")


def venv_python() -> Path:
    return root() / "venv" / "bin" / "python"


def pushcut_root() -> Path:
    """The folder holding pushcut's packages (``actors/``, ``common/``): the ManiSkill
    interpreter imports this checkout's code from it."""
    return Path(__file__).resolve().parents[2]


def interpreter() -> tuple[str, dict[str, str]]:
    """The ManiSkill interpreter and the environment variables it runs with; RuntimeError
    (saying what to run) when it has not been set up."""
    python, mesa = venv_python(), root() / "mesa"
    if not python.exists() or not (mesa / "lvp_icd.json").exists():
        raise RuntimeError("ManiSkill is not set up: run `pushcut setup maniskill`")
    lib = str(mesa / LIB_DIR)
    paths = [str(pushcut_root()), os.environ.get("PYTHONPATH", "")]
    return str(python), {
        "VK_ICD_FILENAMES": str(mesa / "lvp_icd.json"),
        "LD_LIBRARY_PATH": ":".join(filter(None, [lib, os.environ.get("LD_LIBRARY_PATH")])),
        "PYTHONPATH": ":".join(filter(None, paths)),
        "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS", "0"),  # lavapipe on the caller's thread
    }


# ---------------------------------------------------------------------------- Vulkan driver

def _fetch_deb(pool_path: str, sha256: str, dest: Path) -> Path:
    path = dest / Path(pool_path).name
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
        return path
    errors = []
    for base in DEBIAN:
        try:
            with urllib.request.urlopen(base + pool_path, timeout=120) as response:
                data = response.read()
        except OSError as exc:
            errors.append(f"{base}: {exc}")
            continue
        if hashlib.sha256(data).hexdigest() != sha256:
            errors.append(f"{base}: sha256 mismatch")
            continue
        path.write_bytes(data)
        return path
    raise SetupError(f"could not download {Path(pool_path).name} ({'; '.join(errors)})")


def _missing_system_packages() -> list[str]:
    if not shutil.which("dpkg-query"):
        return []
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *SYSTEM_PACKAGES],
                         capture_output=True, text=True).stdout
    have = {line.split()[0] for line in out.splitlines() if line.endswith("install ok installed")}
    return [p for p in SYSTEM_PACKAGES if p not in have]


def ensure_system_packages(say) -> None:
    """apt-get install the system libraries lavapipe links to (root), or say what to run."""
    missing = _missing_system_packages()
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError(f"missing Debian packages {' '.join(missing)}; run as root: "
                         f"apt-get install -y {' '.join(missing)}")
    say(f"[setup] installing Debian packages: {' '.join(missing)}")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        if subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode:
            raise SetupError(f"{' '.join(cmd)} failed")


def ensure_vulkan(say) -> bool:
    """Mesa 25.0.7's lavapipe unpacked into ``root()/mesa`` -> True when this run wrote it."""
    mesa = root() / "mesa"
    icd = mesa / "lvp_icd.json"
    if icd.exists() and (mesa / LIB_DIR / "libvulkan_lvp.so").exists():
        return False
    if platform.machine() != "x86_64" or not shutil.which("dpkg-deb"):
        raise SetupError("the CPU Vulkan driver is fetched as Debian amd64 packages; this "
                         "machine needs x86_64 and dpkg-deb (or a GPU: env.render_backend=gpu)")
    ensure_system_packages(say)
    say("[setup] fetching Mesa 25.0.7 lavapipe (Vulkan on the CPU) from bookworm-backports")
    debs = root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root(), prefix=".mesa-"))
    for pool_path, sha256 in DEBS:
        deb = _fetch_deb(pool_path, sha256, debs)
        if subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)]).returncode:
            raise SetupError(f"dpkg-deb -x {deb} failed")
    lvp = staging / LIB_DIR / "libvulkan_lvp.so"
    (staging / "lvp_icd.json").write_text(json.dumps(   # an absolute path: no search needed
        {"file_format_version": "1.0.0",
         "ICD": {"library_path": str(mesa / LIB_DIR / lvp.name), "api_version": "1.4.305"}}))
    shutil.rmtree(mesa, ignore_errors=True)
    staging.rename(mesa)    # whole or not at all: a killed run leaves no half driver
    return True


# ---------------------------------------------------------------------------- interpreter

def requirements() -> list[str]:
    """The pip specs of the ManiSkill interpreter, pinned exactly."""
    shared = []
    for dist in ("torch", *SHARED):
        try:
            shared.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            shared.append(dist)
    return [MANISKILL, SAPIEN, NUMPY, GYMNASIUM, *shared]


def ensure_venv(say) -> bool:
    """The venv with :func:`requirements` -> True when this run installed anything."""
    venv, specs = root() / "venv", requirements()
    stamp = venv / ".pushcut-maniskill"
    if stamp.exists() and stamp.read_text() == "\n".join(specs):
        return False
    if not venv_python().exists():
        say(f"[setup] creating {venv}")
        base = getattr(sys, "_base_executable", sys.executable)
        if subprocess.run([base, "-m", "venv", str(venv)]).returncode:
            raise SetupError(f"{base} -m venv {venv} failed")
    say(f"[setup] installing {' '.join(specs)}")
    with tempfile.TemporaryDirectory() as tmp:
        # every spec a constraint too: mani-skill's own dependencies cannot move them
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(s for s in specs if "==" in s) + "\n")
        # --no-compile: torch's bytecode is compiled at first import, for what is imported
        run_pip(["install", "-q", "--no-compile", "-c", str(constraints), *specs],
                "installing ManiSkill into its interpreter", python=str(venv_python()),
                again="pushcut setup maniskill")
    stamp.write_text("\n".join(specs))
    return True


def check_render(timeout_s: float = 900.0) -> str:
    """Render one PickCube frame in the ManiSkill interpreter -> its shape; SetupError with
    the reason's last line when it cannot (the first run compiles shaders: a minute or two)."""
    python, env = interpreter()
    try:
        proc = subprocess.run([python, "-c", RENDER_CHECK], env={**os.environ, **env},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SetupError(f"rendering one frame took more than {timeout_s:.0f} s") from None
    lines = [line for line in (proc.stderr + proc.stdout).strip().splitlines() if line.strip()]
    frames = [line.split(" ", 1)[1] for line in lines if line.startswith("frame ")]
    if proc.returncode != 0 or not frames:
        raise SetupError("ManiSkill cannot render a frame: "
                         f"{lines[-1] if lines else f'exit {proc.returncode}'}")
    return frames[0]


def main(cfg, args: list[str]) -> int:
    if list(args) != ["maniskill"]:
        print(USAGE, file=sys.stderr)
        return 2

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        changed = ensure_vulkan(say) | ensure_venv(say)
        shape = check_render()
    except SetupError as exc:
        say(f"pushcut setup maniskill: {exc}")
        return 1
    state = "set up" if changed else "already set up (verified)"
    say(f"[setup] ManiSkill {state}: {MANISKILL}, {SAPIEN} in {root() / 'venv'}; "
        f"one PickCube frame rendered on lavapipe ({shape})")
    return 0
