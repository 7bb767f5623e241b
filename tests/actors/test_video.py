"""Episode videos and the task sheet (actors/video.py)."""
import imageio.v2 as imageio
import numpy as np
import pytest

from actors.video import task_sheet, write_mp4


def test_write_mp4_round_trips_frame_count_and_size(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((12, 64, 64, 3), np.uint8)
    frames[:, 16:48, :, 0] = 200
    frames += rng.integers(0, 20, frames.shape, dtype=np.uint8)
    path = write_mp4(tmp_path / "sub" / "ep.mp4", frames, fps=20)
    with imageio.get_reader(path) as reader:   # len() is unknown (inf): iterate, not list()
        back = np.stack([frame for frame in reader])
    assert back.shape == frames.shape
    # lossy, but the picture survives: the red band is where it was
    assert back[:, 16:48, :, 0].mean() > 150 and back[:, :12, :, 0].mean() < 60


def test_write_mp4_names_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "a.mp4", np.zeros((3, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "a.mp4", np.zeros((3, 63, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="N>=1"):
        write_mp4(tmp_path / "a.mp4", np.zeros((0, 64, 64, 3), np.uint8))


def test_task_sheet_shows_every_family(tmp_path):
    path = task_sheet(tmp_path / "sheet.png", image_size=48)
    sheet = imageio.imread(path)
    assert sheet.ndim == 3 and sheet.shape[0] > 300 and sheet.shape[1] > 300
    # four rows of coloured scenes: the table colour appears in every quarter of the height
    h = sheet.shape[0] // 4
    rows = [sheet[i * h:(i + 1) * h, :, :3].astype(int) for i in range(4)]
    assert all(((r[..., 0] > 120) & (r[..., 2] < 120)).mean() > 0.05 for r in rows)
