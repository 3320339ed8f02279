"""One run counted once, and words that name runs (issue 13): superseded reruns, selectors by
method / run name / config hash prefix / run id / run directory, refusal instead of guessing,
non-runs never indexed, runs found at any depth and in remembered folders."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.results_kit import invoke, make_run, one_error, synthetic_matrices
from udabench.errors import DataError, UserError
from udabench.results.select import resolve
from udabench.results.store import index_run, reindex, remembered_folders, store_path
from udabench.results.view import open_view


@pytest.fixture
def root(tmp_path):
    """adversarial under two configs (a full run, named 'advent', 3 seeds; a 2-iteration smoke run
    that scores higher), source-only (3 seeds), and a rerun of source-only seed 0."""
    rng = np.random.default_rng(3)
    out = tmp_path / "runs"
    m = lambda acc: synthetic_matrices(rng, 24, acc)  # noqa: E731
    for s in range(3):
        make_run(out, "adversarial", s, m(0.6), config="3120c03d9a11", iters=300, name="advent", tags=("ablation",),
                 settings={"method_config": {"lambda_adv": 0.001}})
        make_run(out, "source-only", s, m(0.5), config="50aa77110000", iters=300)
    make_run(out, "adversarial", 0, m(0.8), config="9abc12340000", iters=2,
             settings={"method_config": {"lambda_adv": 0.01}, "train": {"iters": 2}})
    make_run(out, "source-only", 0, m(0.45), config="50aa77110000", iters=300, finished="2026-12-01T10:00:00")
    return out


def test_rerun_of_a_config_and_seed_counts_once(root):
    view = open_view(root)
    so = [r for r in view.rows if r["method"] == "source-only"]
    assert sorted(r["status"] for r in so) == ["finished", "finished", "finished", "superseded"]
    newest = max((r for r in so if r["seed"] == 0), key=lambda r: r["finished"])
    assert newest["status"] == "finished" and newest["finished"] == "2026-12-01T10:00:00"
    old = next(r for r in so if r["status"] == "superseded")
    assert old["superseded_by"] == newest["run_id"]
    data = json.loads(invoke("leaderboard", "--format", "json", "--output-dir", root).stdout)
    row = next(r for r in data["tables"][0]["rows"] if r["method"] == "source-only")
    assert row["n"] == 3 and row["seeds"] == "0,1,2"
    kept = [r["miou"]["19"] for r in view.records if r["method"] == "source-only"]
    assert row["mIoU19"] == pytest.approx(np.mean(kept), abs=1e-4) and newest["miou"]["19"] in kept
    listing = invoke("runs", "--output-dir", root).stdout
    rows = [line for line in listing.splitlines() if line.startswith("20261130-")]
    assert len(rows) == 8 and [line.split()[0] for line in rows if "superseded" in line] == [old["run_id"]]
    only = json.loads(invoke("runs", "--status", "superseded", "--format", "json", "--output-dir", root).stdout)
    assert [r["run_id"] for r in only] == [old["run_id"]]


def test_compare_refuses_to_guess_between_configs(root):
    line = one_error(invoke("compare", "adversarial", "source-only", "--output-dir", root),
                     "'adversarial' names 2 configurations on minicity-gta2cs",
                     "3120c03d (3 seeds, 300 iters, name advent)", "9abc1234 (1 seed, 2 iters)",
                     "choose one by config hash prefix")
    assert "beats" not in line


@pytest.mark.parametrize("word", ["advent", "3120c03d", "3120c0", "3120c03d9a11"])
def test_names_and_config_prefixes_pick_one_configuration(root, word):
    result = invoke("compare", word, "source-only", "--output-dir", root, "--resamples", 200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert f"A = {word}: adversarial, config 3120c03d, name advent [ablation], seed(s) 0,1,2" in text
    assert "B = source-only: source-only, config 50aa7711, seed(s) 0,1,2" in text


def test_run_ids_directories_and_refusals(root):
    smoke = next((root / "minicity-gta2cs" / "adversarial").glob("*-s0-9abc12"))
    by_id = " ".join(invoke("compare", smoke.name, "source-only", "--output-dir", root, "--resamples", 200).stdout.split())
    assert f"A = {smoke.name}: adversarial, run {smoke.name}, seed(s) 0" in by_id
    by_dir = invoke("compare", smoke, "9abc12", "--output-dir", root, "--resamples", 200)
    assert by_dir.exit_code == 0 and "[0.0, 0.0] includes 0" in " ".join(by_dir.stdout.split())
    one_error(invoke("compare", "3120c", "source-only", "--output-dir", root), "too short", "at least 6")
    one_error(invoke("compare", "nothing", "source-only", "--output-dir", root), "unknown method or run 'nothing'", "run name, config hash prefix")
    view = open_view(root)
    with pytest.raises(UserError, match="names 2 configurations"):
        resolve("adversarial", view)
    with pytest.raises(UserError, match="names 2 configurations"):
        resolve("adversarial", view, benchmark="minicity-gta2cs")
    assert resolve("9abc12", view).records[0]["iters"] == 2


def test_leaderboard_selectors_and_filters(root):
    def methods_and_configs(*args):
        data = json.loads(invoke("leaderboard", *args, "--format", "json", "--output-dir", root).stdout)
        return sorted((r["method"], r["config_hash"][:8], r["n"]) for t in data["tables"] for r in t["rows"])

    everything = methods_and_configs()
    assert everything == [("adversarial", "3120c03d", 3), ("adversarial", "9abc1234", 1), ("source-only", "50aa7711", 3)]
    assert methods_and_configs("--method", "adversarial") == everything[:2]
    assert methods_and_configs("--config-hash", "3120c03d") == everything[:1]
    assert methods_and_configs("advent", "source-only") == [everything[0], everything[2]]
    assert methods_and_configs("9abc1234") == [everything[1]]
    one_error(invoke("leaderboard", "--config-hash", "312", "--output-dir", root), "at least 6")
    # The rich table says how the two adversarial configurations differ.
    text = " ".join(invoke("leaderboard", "--output-dir", root).stdout.split())
    assert "adversarial config 3120c03d differs in: method.lambda_adv=0.001, train.iters=300" in text
    assert "adversarial config 9abc1234 differs in: method.lambda_adv=0.01, train.iters=2" in text
    md = invoke("leaderboard", "--format", "markdown", "--output-dir", root).stdout
    assert "| differs in |" in md and "| advent [ablation] |" in md


def test_non_runs_are_never_indexed(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "runs"
    zero = make_run(out, "a", 0, synthetic_matrices(rng, 6, 0.5), iters=0)
    short = make_run(out, "a", 1, synthetic_matrices(rng, 6, 0.5), iters=300, modern=True, planned_iters=600)
    old_short = make_run(out, "a", 2, synthetic_matrices(rng, 6, 0.5), iters=300)
    plan = json.loads((old_short / "config.json").read_text())
    plan["train"]["iters"] = 1000  # an old record without planned_iters: config.json says 1000
    (old_short / "config.json").write_text(json.dumps(plan))
    good = make_run(out, "a", 3, synthetic_matrices(rng, 6, 0.5), iters=300, modern=True)
    no_config = make_run(out, "a", 4, synthetic_matrices(rng, 6, 0.5))
    (no_config / "config.json").unlink()
    store = store_path(out)
    for run, why in ((zero, "trained 0 iterations"), (short, "trained 300 of the 600 planned iterations"),
                     (old_short, "trained 300 of the 1000 planned iterations"), (no_config, "config.json does not exist")):
        with pytest.raises(DataError, match=why) as info:
            index_run(store, run)
        assert "\n" not in str(info.value)
    index_run(store, good)
    summary = reindex(store, out)
    assert summary.indexed == 1 and len(summary.skipped) == 4
    assert [r["run_dir"] for r in open_view(out).records] == [str(good.resolve())]


def test_runs_at_any_depth_and_remembered_folders(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "runs"
    make_run(out, "a", 0, synthetic_matrices(rng, 6, 0.5))
    flat = make_run(tmp_path / "tmp", "b", 0, synthetic_matrices(rng, 6, 0.5))
    shutil.move(flat, out / "scratch" / "flat-run")  # `--out X` of older udabench: X/<run-id>/
    extra = tmp_path / "elsewhere"
    make_run(extra / "deep" / "er", "c", 0, synthetic_matrices(rng, 6, 0.5))
    result = invoke("runs", "--add", extra, "--output-dir", out)
    assert "indexed 3 run(s)" in result.stderr and str(extra.resolve()) in result.stderr
    assert remembered_folders(store_path(out)) == [str(extra.resolve())]
    make_run(extra, "d", 0, synthetic_matrices(rng, 6, 0.5))  # later runs in the remembered folder
    listing = invoke("runs", "--reindex", "--output-dir", out)
    assert "indexed 4 run(s)" in listing.stderr
    assert sorted({r["method"] for r in open_view(out).records}) == ["a", "b", "c", "d"]
    forget = invoke("runs", "--forget", extra, "--reindex", "--output-dir", out)
    assert f"forgot {extra.resolve()}" in forget.stderr and "indexed 2 run(s)" in forget.stderr
    # A remembered folder that disappears is named, not silently dropped.
    invoke("runs", "--add", extra, "--output-dir", out)
    shutil.rmtree(extra)
    gone = invoke("runs", "--reindex", "--output-dir", out)
    assert f"remembered folder {extra.resolve()} no longer exists" in gone.stderr
