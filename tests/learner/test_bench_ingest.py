"""learner/bench_ingest.py: stamped payloads are valid records; the benchmark runs end to
end on a tiny setting and reports consistent figures (no speed is asserted)."""
import uuid

import pytest

from common.config import load_config
from common.trajectory import decode
from learner.bench_ingest import PayloadStamper, run


def test_stamped_payloads_are_valid_distinct_records():
    stamper = PayloadStamper(0, decisions=2, cameras=2, image_size=16)
    group_id = uuid.uuid4().hex
    (tid1, raw1), (tid2, raw2) = stamper.next(group_id), stamper.next(group_id)
    first, second = decode(raw1), decode(raw2)
    assert (first.trajectory_id, first.group_id) == (tid1, group_id)
    assert second.trajectory_id == tid2 != tid1 and len(raw1) == stamper.size
    assert first.images.shape == (2, 2, 16, 16, 3)
    with pytest.raises(ValueError, match="32 bytes"):
        stamper.next("short")


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_on_a_tiny_setting(capsys):
    cfg = load_config(["bench.seconds=2", "bench.producers=2", "bench.decisions=2",
                       "bench.image_size=16", "store.max_batch=4"])
    figures = run(cfg)
    loaded, light = figures["ingest"]["loaded"], figures["ingest"]["light"]
    assert loaded["acked"] > 0 and light["acked"] > 0
    assert loaded["all_flushed"] and light["all_flushed"] and loaded["rejected"] == 0
    assert figures["ingest"]["stored"] == loaded["acked"] + light["acked"]
    assert figures["ratio"] > 0 and loaded["p99_ms"] >= loaded["p50_ms"] > 0
    assert set(figures) >= {"raw_1_per_txn", "raw_4_per_txn"}
    assert "ratio ingest / best raw" in capsys.readouterr().out
