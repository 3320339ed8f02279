"""`udabench runs`, `leaderboard` and `compare` on fake run directories (no training)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.results_kit import invoke, make_run, one_error, synthetic_matrices
from udabench.results.store import index_run, store_path

HOW = "udabench run source-only --benchmark minicity-gta2cs"


@pytest.fixture
def out(tmp_path):
    """Two methods x 3 seeds on one protocol, an oracle, and a run under a second spec hash."""
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.6, 1.2, 60)
    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, "source-only", s, synthetic_matrices(rng, 60, 0.6, difficulty=difficulty), config="so0000000001")
        make_run(root, "clst", s, synthetic_matrices(rng, 60, 0.66, difficulty=difficulty), config="cl0000000001")
    make_run(root, "oracle", 0, synthetic_matrices(rng, 60, 0.9, difficulty=difficulty), config="or0000000001", uda=False)
    make_run(root, "self-training", 0, synthetic_matrices(rng, 60, 0.6), config="st0000000001", spec="spec00000002")
    return root


def test_empty_store_says_how_to_make_a_run(tmp_path):
    empty = tmp_path / "nothing"
    for cmd in (["runs"], ["leaderboard"], ["leaderboard", "--format", "json"]):
        result = invoke(*cmd, "--output-dir", empty)
        assert result.exit_code == 0 and HOW in result.output.replace("\n", " ")
    result = invoke("runs", "--benchmark", "minicity-synthia2cs", "--output-dir", empty)
    assert "udabench run source-only --benchmark minicity-synthia2cs" in result.output.replace("\n", "")
    assert not empty.exists()  # reading never creates a store
    one_error(invoke("compare", "clst", "source-only", "--output-dir", empty), "no finished runs", HOW)


def test_bad_arguments_are_one_line_errors(out):
    one_error(invoke("compare", "clst", "nope", "--output-dir", out),
                    "unknown method or run 'nope'", "clst, oracle, self-training, source-only")
    one_error(invoke("leaderboard", "--benchmark", "minicity-gta2c", "--output-dir", out),
                    "unknown benchmark 'minicity-gta2c'", "did you mean 'minicity-gta2cs'")
    one_error(invoke("runs", "--benchmark", "nosuch", "--output-dir", out), "unknown benchmark 'nosuch'")
    # Methods whose latest runs use different spec hashes cannot be compared.
    one_error(invoke("compare", "clst", "self-training", "--output-dir", out), "compare needs the same benchmark")
    assert invoke("leaderboard", "--format", "xml", "--output-dir", out).exit_code == 2


def test_runs_lists_and_reindex_picks_up_new_runs(out):
    result = invoke("runs", "--output-dir", out)
    assert result.exit_code == 0
    assert "indexed 8 run(s)" in result.stderr and result.output.count("-s0-") >= 3
    assert "not UDA" in result.output
    late = make_run(out, "late-method", 0, synthetic_matrices(np.random.default_rng(9), 60, 0.5))
    assert "late-method" not in invoke("runs", "--output-dir", out).output  # the store is the index
    assert "late-method" in invoke("runs", "--reindex", "--output-dir", out).output
    index_run(store_path(out), late)  # what `udabench run` calls: idempotent with the reindex
    assert invoke("runs", "--output-dir", out).output.count("late-method") == 1


def test_leaderboard_formats(out):
    result = invoke("leaderboard", "--output-dir", out)
    assert result.exit_code == 0
    text = result.output
    assert "warning: benchmark minicity-gta2cs has runs under 2 spec hashes" in text.replace("\n", " ")
    assert "spec00000001" in text and "±" in text and "not UDA" in text
    data = json.loads(invoke("leaderboard", "--format", "json", "--output-dir", out).stdout)
    rows = {r["method"]: r for t in data["tables"] for r in t["rows"]}
    assert rows["clst"]["n"] == 3 and rows["clst"]["mIoU19"] > rows["source-only"]["mIoU19"]
    assert rows["oracle"]["kind"] == "not UDA"
    md = invoke("leaderboard", "--format", "markdown", "--per-class", "--output-dir", out).output
    assert "| traffic sign |" in md and "### minicity-gta2cs (spec spec00000001)" in md
    assert "spec spec00000001 is not the current minicity-gta2cs definition" in md
    csv = invoke("leaderboard", "--format", "csv", "--output-dir", out, "-b", "minicity-gta2cs")
    assert csv.stdout.splitlines()[0].startswith("kind,benchmark,spec_hash,val_set,method,name")  # warnings on stderr
    assert "2 spec hashes" in csv.stderr and len(csv.stdout.splitlines()) == 5
    assert r"\begin{tabular}" in invoke("leaderboard", "--format", "latex", "--output-dir", out).output


def test_compare_methods_runs_and_directories(out):
    result = invoke("compare", "clst", "source-only", "--output-dir", out, "--resamples", 300)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    verdict = re.search(r"clst beats source-only by ([\d.]+) mIoU19, 95% CI \[([\d.-]+), ([\d.-]+)\]", text)
    assert verdict, text
    diff, low, high = map(float, verdict.groups())
    assert 0 < low <= diff <= high
    assert "over seeds: clst" in text and "Welch t CI" in text and "seed(s) 0,1,2" in text
    for name in ("road", "bicycle", "mIoU19"):
        assert name in text
    # The same comparison the other way round names the winner first.
    flipped = " ".join(invoke("compare", "source-only", "clst", "--output-dir", out, "--resamples", 300).output.split())
    assert f"clst beats source-only by {diff:.1f}" in flipped
    # A run directory against its own run id: identical matrices, an interval of exactly zero.
    run_dir = next((out / "minicity-gta2cs" / "clst").iterdir())
    same = invoke("compare", run_dir, run_dir.name, "--output-dir", out, "--resamples", 200)
    same_text = " ".join(same.output.split())
    assert same.exit_code == 0 and "no significant difference" in same_text and "[0.0, 0.0] includes 0" in same_text
    assert "one seed on a side" in same_text
    oracle = " ".join(invoke("compare", "oracle", "clst", "--output-dir", out, "--resamples", 200).output.split())
    assert "not UDA" in oracle and "oracle beats clst" in oracle


def test_compare_refuses_different_image_sets_and_scores_synthia_subsets(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "runs"
    ids = [f"img{i}" for i in range(20)]
    make_run(root, "a", 0, synthetic_matrices(rng, 20, 0.7), ids=ids)
    make_run(root, "b", 0, synthetic_matrices(rng, 20, 0.7), ids=[f"other{i}" for i in range(20)])
    one_error(invoke("compare", "a", "b", "--output-dir", root), "different validation images", "0 in common")
    kw = dict(benchmark="minicity-synthia2cs", subsets=("16", "13"), convention="B", spec="synthia000001")
    for name, acc in (("c", 0.8), ("d", 0.4)):  # indexed the way `udabench run` does at its end
        index_run(store_path(root), make_run(root, name, 0, synthetic_matrices(rng, 20, acc), **kw))
    text = " ".join(invoke("compare", "c", "d", "--output-dir", root, "--resamples", 200).output.split())
    assert "c beats d by" in text and "mIoU16, 95% CI" in text and "mIoU13" in text and "convention B" in text
