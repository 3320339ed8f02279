"""train.init_from in the config hash: a configuration started from finished runs of one
configuration is one row with many seeds; other start points are other configurations."""
from __future__ import annotations

import dataclasses

from udabench.config import TrainConfig
from udabench.engine.plan import init_identity, resolve_plan


def _plan(tmp_path, seed: int, init: dict | None):
    plan = resolve_plan("self-training", "minicity-gta2cs", seed, TrainConfig(), {}, {}, {},
                        tmp_path / "data", tmp_path / "runs")
    return dataclasses.replace(plan, init_from=init)


def _run(config: str, seed: int, sha: str) -> dict:
    return {"run_id": f"r-{config}-{seed}", "run_dir": "/x", "method": "source-only",
            "checkpoint": "/x/last.pt", "sha256": sha, "config_hash": config, "seed": seed}


def test_each_seed_from_its_own_seeds_source_run_is_one_configuration(tmp_path):
    hashes = {_plan(tmp_path, s, _run("aaaa", s, f"sha{s}")).config_hash() for s in range(3)}
    assert len(hashes) == 1
    # ... which is not the configuration without a start run, nor one from another source config
    assert hashes != {_plan(tmp_path, 0, None).config_hash()}
    assert _plan(tmp_path, 0, _run("bbbb", 0, "sha0")).config_hash() not in hashes


def test_one_fixed_start_run_for_every_seed_differs_from_matching_seeds(tmp_path):
    fixed = {_plan(tmp_path, s, _run("aaaa", 0, "sha0")).config_hash() for s in (1, 2)}
    matching = _plan(tmp_path, 1, _run("aaaa", 1, "sha1")).config_hash()
    assert len(fixed) == 1 and matching not in fixed


def test_weights_files_and_old_records_enter_by_checksum():
    file_init = {"run_id": None, "checkpoint": "/w.pt", "sha256": "abc", "config_hash": None, "seed": None}
    assert init_identity(file_init, 0) == "abc"
    old_record = {"run_id": "r", "checkpoint": "/x/last.pt", "sha256": "def"}  # before config_hash
    assert init_identity(old_record, 3) == "def"
    assert init_identity(_run("aaaa", 2, "s"), 2) == {"run_config": "aaaa", "seed": "same"}
    assert init_identity(_run("aaaa", 0, "s"), 2) == {"run_config": "aaaa", "seed": 0}
