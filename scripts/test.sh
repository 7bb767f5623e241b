#!/usr/bin/env bash
# Sets up pushcut (scripts/setup.sh) and runs the whole test suite, slow and LIBERO tests
# included. Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
export WANDB_MODE=${WANDB_MODE:-offline} PYTHONUNBUFFERED=1
set +e
.venv/bin/python -m pytest tests "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": that is a failure of the suite, not a pass
exit $rc
