"""The soak's measurements: process-tree RSS, versions read from a growing learner.jsonl, and
run-local default paths. (The soak itself is a command, run for the README figures.)"""
import json
import subprocess
import sys

import psutil

from common.config import load_config
from deploy.soak import (
    VersionTail, dir_size_mb, run_local_paths, steady_rows, summarise, tree_rss_mb,
)
from tests.ingest_helpers import wait_until

# a parent holding ~40 MiB, with a child holding ~40 MiB more; both wait for stdin to close
TREE = ("import subprocess, sys; b = bytearray(40 << 20); "
        "c = subprocess.Popen([sys.executable, '-c', "
        "'import sys; b = bytearray(40 << 20); print(1, flush=True); sys.stdin.read()'], "
        "stdin=subprocess.PIPE); sys.stdin.read(); c.stdin.close(); c.wait()")


def test_tree_rss_counts_the_children():
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE)
    try:
        wait_until(lambda: psutil.Process(parent.pid).children(), 30, "the child process")
        child = psutil.Process(parent.pid).children()[0]
        wait_until(lambda: child.memory_info().rss > 40 << 20, 30, "the child's allocation")
        own = psutil.Process(parent.pid).memory_info().rss / 2**20
        total = tree_rss_mb(parent.pid)
        assert total >= own + 40, f"tree {total:.0f} MiB, parent alone {own:.0f} MiB"
    finally:
        parent.stdin.close()
        parent.wait(30)
    assert tree_rss_mb(parent.pid) == 0.0


def test_version_tail_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "learner.jsonl"
    tail = VersionTail(path)
    assert tail.read() == 0                      # no file yet
    with open(path, "w") as f:
        f.write(json.dumps({"event": "update", "policy_version": 3}) + "\n")
        f.write(json.dumps({"event": "eval", "policy_version": 9}) + "\n")
        f.write('{"event": "update", "policy_ver')   # torn: still being written
        f.flush()
        assert tail.read() == 3
        f.write('sion": 4}\n')
    assert tail.read() == 4


def test_soak_keeps_store_and_checkpoints_in_its_run_dir(tmp_path):
    cfg = load_config([f"run_dir={tmp_path}"])
    over, store = run_local_paths(cfg, [f"run_dir={tmp_path}"])
    assert f"store.path={tmp_path}/store" in over and store == f"{tmp_path}/store"
    assert f"learner.checkpoint_dir={tmp_path}/checkpoints" in over
    mine = [f"run_dir={tmp_path}", f"store.path={tmp_path}/elsewhere"]
    cfg = load_config(mine)
    over, store = run_local_paths(cfg, mine)
    assert store == f"{tmp_path}/elsewhere" and not any(o.endswith("/store") for o in over)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "data.mdb").write_bytes(b"x" * (3 << 20))
    assert 2.9 < dir_size_mb(store) < 3.1


def test_growth_is_measured_after_start_up():
    rows = [{"t_s": t, "store_mb": t / 10, "a": 10.0 if t == 0 else 500.0 + t / 360}
            for t in range(0, 3601, 10)]
    assert steady_rows(rows)[0]["t_s"] == 60
    table = summarise(rows, ["a"])
    growth = {row: cells for row, cells in zip(table.columns[0]._cells,
                                               zip(*[c._cells for c in table.columns[1:]]))}
    assert growth["a"][4] == "+10"   # 500 -> 510 over the steady hour, not 10 -> 510
    assert growth["a"][0] == "10"
