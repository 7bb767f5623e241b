"""learner/bench/ingest_bad.py: the benchmark runs end to end on a tiny setting against a real
store process and reports both phases, the bad records' rejections and the store's memory
(no speed is asserted)."""
import json
import os

import pytest

from common.config import ConfigError, load_config
from deploy.bench import main
from learner.bench.ingest_bad import store_memory


def test_store_memory_reads_a_live_process_and_tolerates_a_missing_one():
    mine = store_memory(os.getpid())
    assert mine["rss"] > 0 and mine["peak"] >= mine["rss"] and mine["anon"] > 0
    assert store_memory(2 ** 22 + 1) == {"rss": None, "anon": None, "peak": None}


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "ingest-bad.json"
    cfg = load_config(["bench.seconds=2", "bench.decisions=2", "bench.image_size=16",
                       "bench.ingest_bad_rate=20", "bench.ingest_bad_every_s=0.5",
                       f"bench.out={out}"])
    assert main(cfg, ["ingest-bad"]) == 0
    figures = json.loads(out.read_text())
    alone, beside = figures["alone"], figures["with_bad"]
    for phase in (alone, beside):
        assert phase["acked"] > 0 and phase["all_flushed"] and phase["rejected"] == 0
        assert phase["p99_ms"] >= phase["p50_ms"] > 0
        assert phase["store_mib"]["rss"] > 0
    bad = beside["bad"]
    assert bad["sent"] >= 1 and bad["bytes"] > 12_000_000 and bad["flushed"]
    assert bad["rejected"] == {"too_large": bad["sent"]} and bad["acked"] == 0
    assert "exceeds max_map_len" in bad["detail"]
    assert figures["store_rejected"] == {"too_large": bad["sent"]}
    assert figures["stored"] == figures["warmup"]["acked"] + alone["acked"] + beside["acked"]
    assert figures["ratio_p99"] == pytest.approx(beside["p99_ms"] / alone["p99_ms"])
    assert figures["calibration"]["cores"] >= 1
    printed = capsys.readouterr().out
    assert "machine: " in printed and "ratio beside a bad sender / alone: p50" in printed
    assert f"bad records: {bad['sent']} sent" in printed and "store RSS peak" in printed


def test_a_bad_rate_or_period_is_refused_as_a_setting():
    for setting in ("bench.ingest_bad_rate=0", "bench.ingest_bad_every_s=-1"):
        with pytest.raises(ConfigError, match=setting.split("=")[0]):
            load_config([setting])
