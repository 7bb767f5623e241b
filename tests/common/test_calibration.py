"""The machine's calibration: the cores this process may use, and one thread's matmul speed."""
import os

import torch

from common.calibration import calibrate, matmul_gflops


def test_calibration_counts_the_usable_cores_and_a_positive_speed():
    c = calibrate(seconds=0.2)
    assert c.cores == len(os.sched_getaffinity(0))
    assert c.gflops_1thread > 0.5           # any CPU that runs torch does far more
    assert f"{c.cores} cores" in c.line() and "GFLOPS per thread" in c.line()
    assert set(c.to_dict()) == {"cores", "gflops_1thread", "cpu"}


def test_the_measurement_leaves_torchs_thread_count_as_it_was():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        matmul_gflops(seconds=0.1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
