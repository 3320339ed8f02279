"""Convention-B tables show the IoUs their headline averages (issue 12 item 8), and a leaderboard
without runs shows the published numbers (item 11)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.results_kit import invoke, make_run, synthetic_matrices
from udabench.metrics import apply_convention, iou_from_matrix
from udabench.results.aggregate import load_reported
from udabench.results.view import open_view
from udabench.taxonomy import CLASS_NAMES, SUBSETS

SYN = dict(benchmark="minicity-synthia2cs", subsets=("16", "13"), convention="B", spec="synthia000001")
CLASSES_16 = [CLASS_NAMES[i] for i in SUBSETS["16"]]


def _rows(root, *args):
    data = json.loads(invoke("leaderboard", "--per-class", "--format", "json", *args, "--output-dir", root).stdout)
    return data, {r["method"]: r for t in data["tables"] for r in t["rows"]}


@pytest.fixture
def synthia(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "runs"
    mats = {name: synthetic_matrices(rng, 20, acc) for name, acc in (("new", 0.6), ("old", 0.6), ("bare", 0.5))}
    runs = {"new": make_run(root, "new", 0, mats["new"], modern=True, **SYN),
            "old": make_run(root, "old", 0, mats["old"], **SYN),  # before iou_convention: recomputed
            "bare": make_run(root, "bare", 0, mats["bare"], **SYN)}
    (runs["bare"] / "per_image.npz").unlink()  # ... and one that cannot be recomputed
    return root, runs, mats


def test_convention_b_rows_average_to_their_own_headline(synthia):
    root, runs, mats = synthia
    data, rows = _rows(root)
    for name in ("new", "old"):
        truth = iou_from_matrix(apply_convention(mats[name].sum(0), "B")) * 100
        row = rows[name]
        shown = [row[f"IoU {c}"] for c in CLASS_NAMES if f"IoU {c}" in row]
        assert len(shown) == 16  # the classes of mIoU16, not 19
        assert [row[f"IoU {c}"] for c in CLASSES_16] == pytest.approx([truth[CLASS_NAMES.index(c)] for c in CLASSES_16])
        assert np.mean(shown) == pytest.approx(row["mIoU16"], abs=1e-6)  # the table averages to its headline
        conv_a = json.loads((runs[name] / "result.json").read_text())["iou"]
        assert np.mean([conv_a[c] for c in CLASSES_16]) != pytest.approx(row["mIoU16"], abs=0.1)
    # No iou_convention and no matrices: the classes are '-' and a note says why.
    bare = rows["bare"]
    assert all(bare[f"IoU {c}"] is None for c in CLASSES_16) and bare["mIoU16"] > 0
    # The record with a validation fingerprint and the older ones never share a table.
    assert sorted(t["val_set"] for t in data["tables"]) == ["20 images", json.loads(
        (runs["new"] / "result.json").read_text())["eval"]["val_fingerprint"]]
    assert any("validation sets" in w for w in data["warnings"])
    table = next(t for t in data["tables"] if any(r["method"] == "bare" for r in t["rows"]))
    assert any("per-class IoUs of 1 convention-B run(s) not shown" in n and "per_image.npz is missing" in n
               for n in table["notes"])
    md = invoke("leaderboard", "--per-class", "--format", "markdown", "--output-dir", root).stdout
    bare_line = next(line for line in md.splitlines() if line.startswith("| bare "))
    assert bare_line.count("| - ") >= 16 and "| terrain |" not in md


def test_compare_shows_convention_b_classes(synthia):
    root, _, mats = synthia
    text = invoke("compare", "new", "old", "--output-dir", root, "--resamples", 200).stdout
    truth = iou_from_matrix(apply_convention(mats["new"].sum(0), "B")) * 100
    road = next(line for line in text.splitlines() if line.strip("│ ").startswith("road"))
    assert f"{truth[0]:.1f}" in road
    assert "terrain" not in text and "truck" not in text


def test_leaderboard_without_runs_shows_reported_rows(tmp_path):
    empty = tmp_path / "fresh"
    result = invoke("leaderboard", "--benchmark", "gta2cs", "--output-dir", empty)
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for part in ("Source only [R1]", "reported", "36.6", "AdvEnt+MinEnt", "two-model ensemble", "published numbers only"):
        assert part in text
    assert "no finished runs for benchmark gta2cs" in result.stderr
    assert "udabench run source-only --benchmark gta2cs" in " ".join(result.stderr.split())
    data = json.loads(invoke("leaderboard", "--format", "json", "--output-dir", empty).stdout)
    assert [t["benchmark"] for t in data["tables"]] == ["gta2cs", "synthia2cs"]
    assert all(t["rows"] == [] and t["reported"] for t in data["tables"])
    assert {r["kind"] for t in data["tables"] for r in t["reported"]} == {"reported"}
    csv = invoke("leaderboard", "-b", "synthia2cs", "--format", "csv", "--output-dir", empty).stdout.splitlines()
    n_synthia = sum(e["benchmark"] == "synthia2cs" for e in load_reported())
    assert csv[0].startswith("kind,benchmark,spec_hash,val_set,method") and len(csv) == 1 + n_synthia
    assert all(line.startswith("reported,synthia2cs") for line in csv[1:])
    assert not empty.exists()


def test_benchmark_without_runs_or_reported_rows_gives_empty_tables(tmp_path):
    empty = tmp_path / "fresh"
    args = ("leaderboard", "-b", "minicity-gta2cs", "--output-dir", empty)
    csv = invoke(*args, "--format", "csv")
    assert csv.exit_code == 0 and len(csv.stdout.splitlines()) == 1
    assert csv.stdout.startswith("kind,benchmark,spec_hash,val_set,method,") and "no finished runs" in csv.stderr
    assert json.loads(invoke(*args, "--format", "json").stdout) == {"warnings": [], "tables": []}
    tex = invoke(*args, "--format", "latex").stdout
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\bottomrule" in tex and "no finished runs" in tex
    md = invoke(*args, "--format", "markdown").stdout.strip().splitlines()
    assert md[0].startswith("| method |") and len(md) == 2
    for fmt in ("csv", "json", "latex", "markdown"):
        assert "make one with" not in invoke(*args, "--format", fmt).stdout


def test_old_store_rows_recompute_on_reindex(synthia):
    root, runs, mats = synthia
    old = next(r for r in open_view(root).records if r["method"] == "old")
    assert old["iou_convention_source"] == "per_image.npz"
    assert "iou_convention" not in json.loads((runs["old"] / "result.json").read_text())  # evidence untouched


def test_run_result_table_averages_to_its_headline(synthia):
    import io

    from rich.console import Console

    from udabench.report import result_table

    _, runs, _ = synthia
    record = json.loads((runs["new"] / "result.json").read_text())
    console = Console(width=120, file=io.StringIO())
    console.print(result_table(record))
    rows = [line.split("│")[1:3] for line in console.file.getvalue().splitlines() if line.count("│") >= 4]
    values = {name.strip(): float(v) for name, v in rows if name.strip() in CLASSES_16}
    assert list(values) == CLASSES_16 and "terrain" not in console.file.getvalue()
    assert np.mean(list(values.values())) == pytest.approx(record["miou"]["16"], abs=0.06)  # shown to 0.1
    assert "IoU (convention B)" in console.file.getvalue()
