"""Episode videos (mp4 through imageio's ffmpeg) and the PNG sheet of the tabletop tasks.

``write_mp4(path, frames, fps)`` takes uint8 [N, H, W, 3] frames; ``task_sheet(path)``
renders the initial state of every tabletop task (one row per family, titled with the
instruction) into one PNG. Regenerate the README's sheet with
``python -m actors.video docs/images/tabletop_tasks.png``.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 20) -> Path:
    """Write uint8 frames [N, H, W, 3] (N >= 1, H and W even, as H.264 needs) to ``path``."""
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"frames must be uint8 [N>=1, H, W, 3], got {frames.dtype} "
                         f"{list(frames.shape)}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame size {frames.shape[1]}x{frames.shape[2]} must be even for H.264")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1: keep 64x64 frames as they are instead of resizing to 16-multiples
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1,
                            quality=8, pixelformat="yuv420p") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def task_sheet(path: str | Path, image_size: int = 192, init_state_id: int = 0) -> Path:
    """One PNG: a row per family, a column per task, each the agentview image of the task's
    initial state ``init_state_id``, titled with its task_id and instruction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from actors.envs.tabletop import FAMILIES, TabletopEnv, tasks_of
    from common.config.envs import TabletopEnvConfig

    env = TabletopEnv(TabletopEnvConfig(image_size=image_size))
    rows = [tasks_of(f) for f in FAMILIES]
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.0 * cols, 3.3 * len(rows)),
                             squeeze=False)
    try:
        for i, row in enumerate(rows):
            for j in range(cols):
                ax = axes[i][j]
                ax.axis("off")
                if j < len(row):
                    task = row[j]
                    ax.imshow(env.reset(task.task_id, init_state_id)["images"][0])
                    title = "\n".join(textwrap.wrap(task.instruction, 30))
                    ax.set_title(f"{task.task_id}\n{title}", fontsize=9)
    finally:
        env.close()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(task_sheet(sys.argv[1] if len(sys.argv) > 1 else "docs/images/tabletop_tasks.png"))
