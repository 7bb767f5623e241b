"""``pushcut bench``: every benchmark's figures carry the machine's calibration."""
import json

from common.config import load_config
from deploy.bench import main


def test_bench_writes_the_calibration_beside_the_figures(tmp_path, capsys):
    out = tmp_path / "policy.json"
    cfg = load_config(["bench.seconds=1", "model.preset=micro", f"bench.out={out}"])
    assert main(cfg, ["policy"]) == 0
    figures = json.loads(out.read_text())
    assert figures["calibration"]["cores"] >= 1 and figures["calibration"]["gflops_1thread"] > 0
    assert "machine: " in capsys.readouterr().out


def test_an_unknown_benchmark_is_refused_with_the_list(capsys):
    assert main(load_config([]), ["nope"]) == 2
    assert "pipeline" in capsys.readouterr().err
