"""Aggregation over seeds (against a hand-made fixture), reported rows, and table rendering."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from udabench.results import tables
from udabench.results.aggregate import aggregate, build_boards, load_reported

FIXTURE = Path(__file__).parent / "fixtures" / "run_records.json"
S1, S2, S3 = "aaaa11112222", "bbbb33334444", "cccc55556666"


@pytest.fixture
def records():
    return json.loads(FIXTURE.read_text())


def _row(df, spec, method, config):
    sel = df[(df.spec_hash == spec) & (df.method == method) & (df.config_hash == config)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_aggregate_matches_hand_computed_means_and_stds(records):
    df = aggregate(records)
    assert len(df) == 6  # 10 records -> 6 (benchmark, spec, method, config) groups
    so = _row(df, S1, "source-only", "cfg0000000a1")
    assert (so.n, so.seeds, bool(so.uda)) == (3, "0,1,2", True)
    # mIoU19 30, 32, 34 -> mean 32, sample std sqrt(((-2)^2 + 0 + 2^2) / 2) = 2
    assert so["mIoU19"] == pytest.approx(32.0) and so["mIoU19 std"] == pytest.approx(2.0)
    # road 80, 82, 87 -> mean 83, std sqrt((9 + 1 + 16) / 2) = sqrt(13)
    assert so["IoU road"] == pytest.approx(83.0) and so["IoU road std"] == pytest.approx(math.sqrt(13))
    # sidewalk 10, NaN, 20: the NaN (zero union) is skipped -> mean 15, std sqrt(50)
    assert so["IoU sidewalk"] == pytest.approx(15.0) and so["IoU sidewalk std"] == pytest.approx(math.sqrt(50))
    assert so["IoU wall"] == 25.0 and so["IoU wall std"] == 0.0
    # compute: train 100/110/120 -> 110, wall +5 each -> 115, img/s 10/12/14 -> 12, peak memory max 3e9
    assert (so.train_seconds, so.wall_seconds, so.images_per_second) == (110.0, 115.0, 12.0)
    assert so.peak_memory_bytes == 3e9
    clst = _row(df, S1, "clst", "cfg0000000b2")
    # 40, 41, 45 -> mean 42, std sqrt((4 + 1 + 9) / 2) = sqrt(7)
    assert clst["mIoU19"] == pytest.approx(42.0) and clst["mIoU19 std"] == pytest.approx(math.sqrt(7))
    assert clst.network == "teacher" and clst.train_seconds == 220.0
    single = _row(df, S1, "clst", "cfg0000000c3")
    assert single.n == 1 and single["mIoU19"] == 44.0 and math.isnan(single["mIoU19 std"])
    # Same method and benchmark under another spec hash: its own row, never averaged in.
    other = _row(df, S2, "source-only", "cfg0000000d4")
    assert other.n == 1 and other["mIoU19"] == 20.0
    assert not bool(_row(df, S1, "oracle", "cfg0000000e5").uda)
    syn = _row(df, S3, "source-only", "cfg0000000f6")
    assert (syn["mIoU16"], syn["mIoU13"]) == (28.0, 33.0) and math.isnan(syn["mIoU19"])
    # Sorted by benchmark, spec hash, then headline mIoU descending.
    assert list(df.method[df.spec_hash == S1]) == ["oracle", "clst", "clst", "source-only"]
    assert list(df.columns[:8]) == ["benchmark", "spec_hash", "val_set", "method", "config_hash", "n", "seeds", "uda"]
    assert set(df.val_set) == {"40 images"}  # records without a fingerprint: grouped by image count


def test_boards_split_by_spec_hash_and_carry_protocol(records):
    boards, warnings = build_boards(records)
    assert [(b.benchmark, b.spec_hash) for b in boards] == [
        ("minicity-gta2cs", S1), ("minicity-gta2cs", S2), ("minicity-synthia2cs", S3)]
    assert len(warnings) == 1 and S1 in warnings[0] and S2 in warnings[0]
    first = boards[0]
    assert first.protocol["network"] == "student / teacher (varies by row)"
    caption = first.caption()
    for part in (S1, "mIoU19", "convention A", "96x192", "last checkpoint"):
        assert part in caption
    assert boards[2].subsets == ["16", "13"] and "mIoU16, mIoU13" in boards[2].caption()
    assert all(b.reported.empty for b in boards)  # no published numbers for MiniCity
    only, warn = build_boards(records, "minicity-synthia2cs")
    assert len(only) == 1 and warn == []


def test_reported_file_is_consistent():
    entries = load_reported()
    assert {e["benchmark"] for e in entries} == {"gta2cs", "synthia2cs"}
    for e in entries:
        assert e["source"] and e["method"] and e["miou"]
        allowed = {"19"} if e["benchmark"] == "gta2cs" else {"16", "13"}
        assert set(e["miou"]) <= allowed
        # per-class transcription checks (19- and 16-class rows): tests/test_reported.py
    caveats = " ".join(c for e in entries for c in e["caveats"])
    for word in ("two-model ensemble", "best snapshot", "MiT-B5"):
        assert word in caveats


def test_reported_rows_never_enter_means(records):
    gta = [dict(r, benchmark="gta2cs") for r in records if r["spec_hash"] == S1 and r["method"] == "source-only"]
    boards, _ = build_boards(gta)
    (board,) = boards
    assert list(board.rows.method) == ["source-only"] and board.rows.iloc[0]["mIoU19"] == pytest.approx(32.0)
    assert board.rows.iloc[0].n == 3
    assert 36.6 in list(board.reported["mIoU19"])
    data = json.loads(tables.to_json(boards, []))
    (table,) = data["tables"]
    assert [r["mIoU19"] for r in table["rows"]] == [pytest.approx(32.0)]
    rep = {r["method"]: r for r in table["reported"]}
    assert rep["Source only"]["mIoU19"] == 36.6 and rep["Source only"]["kind"] == "reported"
    assert "two-model ensemble" in rep["AdvEnt+MinEnt"]["caveats"]
    md = tables.to_markdown(boards, [])
    assert "32.0 ± 2.0" in md and "| Source only [R1] | reported |" in md and "Tsai et al." in md


def test_markdown_latex_csv_highlight_and_mark(records):
    boards, warnings = build_boards(records)
    md = tables.to_markdown(boards, warnings, per_class=True)
    assert md.startswith("> warning: benchmark minicity-gta2cs has runs under 2 spec hashes")
    s1 = md.split("### ")[1]
    assert "**44.0**" in s1 and "**60.0**" not in s1  # best UDA run, not the oracle
    assert "| oracle | not UDA |" in s1
    assert "**1.8 min**" in s1  # least training time among UDA runs (source-only, 110 s)
    header = next(line for line in s1.splitlines() if line.startswith("| method"))
    assert "| network |" in header and "| traffic light |" in header  # full class names in markdown
    tex = tables.to_latex(boards, warnings)
    assert r"\begin{tabular}" in tex and r"\textbf{44.0}" in tex and r"$\pm$" in tex and S2 in tex
    csv = tables.to_csv(boards).splitlines()
    assert csv[0].startswith("kind,benchmark,spec_hash,val_set,method,name,config_hash,n,seeds,uda,mIoU19,mIoU19 std")
    assert any(line.startswith("not UDA,minicity-gta2cs,aaaa11112222,40 images,oracle") for line in csv)


@pytest.mark.parametrize("width", [80, 120])
def test_rich_tables_fit_the_terminal(records, width):
    gta = records + [dict(r, benchmark="gta2cs") for r in records if r["spec_hash"] == S1]
    boards, warnings = build_boards(gta)
    console = Console(width=width, record=True, file=io.StringIO())
    tables.render_rich(boards, warnings, console, per_class=True)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    for name in ("road", "sidew.", "light", "bike", "mIoU19", "mIoU13", "AdvEnt+MinEnt", "reported", "not UDA"):
        assert name in text
    assert text.count(S1) >= 2  # every table of that protocol carries it in its caption
