"""learner/bench/ingest.py: stamped payloads are valid records; the benchmark runs end to
end on a tiny setting and reports consistent figures (no speed is asserted)."""
import uuid

import pytest

from common.config import load_config
from common.wire.trajectory import decode
from learner.bench.ingest import PayloadStamper, run


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
    saturated, paced = figures["ingest"]["saturated"], figures["ingest"]["paced"]
    assert saturated["acked"] > 0 and paced["acked"] > 0
    assert saturated["all_flushed"] and paced["all_flushed"] and saturated["rejected"] == 0
    assert figures["ingest"]["stored"] == saturated["acked"] + paced["acked"]
    assert figures["ratio"] > 0 and saturated["p99_ms"] >= saturated["p50_ms"] > 0
    # the paced phase offers half the saturated rate, and that is what it gets through
    assert paced["offered_traj_per_s"] == pytest.approx(0.5 * saturated["traj_per_s"])
    assert paced["traj_per_s"] < 0.8 * saturated["traj_per_s"]
    assert paced["p99_ms"] >= paced["p50_ms"] > 0
    assert set(figures) >= {"raw_1_per_txn", "raw_4_per_txn"}
    out = capsys.readouterr().out
    assert "ratio saturated ingest / best raw" in out and "p99 ack at the paced load" in out


def test_a_paced_load_must_be_positive():
    cfg = load_config(["bench.ingest_paced_load=0"])
    with pytest.raises(ValueError, match="ingest_paced_load"):
        run(cfg)
