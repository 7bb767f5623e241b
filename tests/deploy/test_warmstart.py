"""The shipped warm-start policy: made with today's defaults, loaded and acting as it did
when it was made under today's model code, and what ``pushcut run`` does with it."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

from common.config import load_config
from common.models import load_policy
from common.process import StopSignals
from deploy.warmstart import MANIFEST, SHIPPED, golden_tokens, prepare_policy, shipped_policy


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((SHIPPED / MANIFEST).read_text())


def test_the_shipped_policy_was_made_with_todays_defaults(manifest):
    # a changed default of the env, model, demos or SFT makes the shipped policy another
    # recipe's: remake it with `pushcut warmstart`
    assert shipped_policy(load_config([])) == SHIPPED


def test_the_current_model_code_acts_as_the_policy_did_when_it_was_made(manifest):
    policy = load_policy(SHIPPED)
    golden = manifest["golden"]
    assert golden_tokens(policy, golden["instructions"]) == golden["tokens"]


def test_the_shipped_policy_meets_the_start_the_quick_start_promises(manifest):
    assert manifest["success"]["0.0"] >= 0.25
    assert manifest["calibration"]["gflops_1thread"] > 0 and manifest["command"]


@pytest.mark.parametrize("override", ["env.wrist_camera=true", "model.num_bins=9",
                                      "sft.steps=100", "demos.per_task=1", "seed=1"])
def test_another_recipe_gets_no_shipped_policy(override):
    assert shipped_policy(load_config([override])) is None


def test_a_run_copies_the_shipped_policy_into_its_directory_and_keeps_it(tmp_path):
    cfg = load_config([f"run_dir={tmp_path}"])
    console = Console(record=True, width=200)
    first = prepare_policy(cfg, tmp_path, tmp_path / "logs", console, StopSignals())
    assert first == str(tmp_path / "sft" / "final")
    assert (tmp_path / "sft" / "final" / "config.json").exists()
    assert not (tmp_path / "demos").exists()            # nothing was trained
    assert "shipped SFT policy" in console.export_text()
    # a resumed run starts from its own copy
    assert prepare_policy(cfg, tmp_path, tmp_path / "logs", console, StopSignals()) == first
