"""The machine's calibration: how many cores, and how fast one of them multiplies matrices.

Every figure pushcut publishes (``pushcut bench``, ``pushcut experiment``'s results.json,
``pushcut run``'s first status line) carries it, so that a reader can map a figure measured
on one CPU to their own: on these small models a step's time scales with the inverse of the
one-thread GFLOPS, and the parallel stages with the cores.

In: nothing (it measures). Out: :class:`Calibration` (``cores``: the cores this process may
run on; ``gflops_1thread``: fp32 GFLOPS of a 512x512 matmul on one thread, the best of a few
timed repeats so that a busy neighbour lowers it less; ``cpu``: the processor's name).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

MATMUL_SIDE = 512


@dataclass(frozen=True)
class Calibration:
    cores: int
    gflops_1thread: float
    cpu: str

    def line(self) -> str:
        """'2 cores, 79 GFLOPS per thread (AMD EPYC)'."""
        return f"{self.cores} cores, {self.gflops_1thread:.0f} GFLOPS per thread ({self.cpu})"

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def matmul_gflops(seconds: float = 0.6, repeats: int = 3) -> float:
    """fp32 GFLOPS of a MATMUL_SIDE^2 matmul on one thread: the best of ``repeats`` windows
    of ``seconds / repeats`` each (torch's thread count is restored afterwards)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(MATMUL_SIDE, MATMUL_SIDE), torch.randn(MATMUL_SIDE, MATMUL_SIDE)
        a @ b   # first call: allocation and kernel choice
        flop = 2 * MATMUL_SIDE ** 3
        best = 0.0
        for _ in range(repeats):
            n, start, deadline = 0, time.perf_counter(), time.perf_counter() + seconds / repeats
            while time.perf_counter() < deadline:
                a @ b
                n += 1
            best = max(best, n * flop / (time.perf_counter() - start) / 1e9)
        return best
    finally:
        torch.set_num_threads(threads)


def calibrate(seconds: float = 0.6) -> Calibration:
    return Calibration(cores=usable_cores(), gflops_1thread=round(matmul_gflops(seconds), 1),
                       cpu=cpu_name())
