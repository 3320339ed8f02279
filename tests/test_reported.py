"""The published numbers in udabench/results/reported.json: every row traceable to its source, and
every per-class row consistent with its headline (a transcription check that a typo breaks)."""
from __future__ import annotations

import copy
import math
import re

import pytest

from udabench.results.aggregate import iou_col, load_reported, miou_col, reported_frame
from udabench.taxonomy import CLASS_NAMES, SUBSETS

BENCHMARK_SUBSETS = {"gta2cs": ("19",), "synthia2cs": ("16", "13")}
READ_KEYS = ("benchmark", "method", "udabench_method", "architecture", "source", "caveats", "miou", "iou")
SOURCE_KEYS = ("paper", "venue", "year", "table", "url", "verified")
TOLERANCE = 0.1  # published headlines are rounded to 0.1 (CRST: 0.01); per-class values likewise
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def subset_names(subset: str) -> list[str]:
    return [CLASS_NAMES[i] for i in SUBSETS[subset]]


def mean_mismatches(entry: dict) -> list[str]:
    """Headlines that the row's own per-class IoUs do not reproduce (nanmean over the subset)."""
    out = []
    for subset, headline in entry["miou"].items():
        values = [entry["iou"].get(name, math.nan) for name in subset_names(subset)]
        present = [v for v in values if v is not None and not math.isnan(v)]
        if len(present) != len(values):
            out.append(f"mIoU{subset}: {len(values) - len(present)} classes of the subset missing")
            continue
        mean = sum(present) / len(present)
        if abs(mean - headline) > TOLERANCE:
            out.append(f"mIoU{subset}: published {headline}, per-class mean {mean:.3f}")
    return out


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    return load_reported()


def test_every_row_has_the_keys_the_leaderboard_reads(entries):
    assert entries
    for e in entries:
        missing = [k for k in READ_KEYS if k not in e]
        assert not missing, (e.get("method"), missing)
        assert e["benchmark"] in BENCHMARK_SUBSETS, e["benchmark"]
        assert e["method"] and e["architecture"] and e["source"]
        assert isinstance(e["caveats"], list) and all(isinstance(c, str) and c for c in e["caveats"])
        assert e["udabench_method"] is None or isinstance(e["udabench_method"], str)
    keys = [(e["benchmark"], e["method"]) for e in entries]
    assert len(keys) == len(set(keys)), "duplicate (benchmark, method) rows"


def test_every_row_names_a_traceable_source(entries):
    for e in entries:
        who = f"{e['benchmark']}/{e['method']}"
        for key in SOURCE_KEYS:
            assert e.get(key) not in (None, ""), f"{who}: no {key}"
        assert isinstance(e["year"], int) and 2015 <= e["year"] <= 2030, who
        assert e["url"].startswith("https://"), who
        if "README" in e["table"]:  # a README number is pinned to the commit it was read at
            assert e.get("repository") and COMMIT.match(e.get("commit") or ""), who
        if "commit" in e:
            assert COMMIT.match(e["commit"]) and e.get("repository"), who
        for item in e.get("corroboration", []):
            assert isinstance(item, str) and item, who


def test_headlines_are_percentages_on_the_benchmarks_subsets(entries):
    for e in entries:
        allowed = BENCHMARK_SUBSETS[e["benchmark"]]
        assert e["miou"] and set(e["miou"]) <= set(allowed), (e["method"], e["miou"])
        assert allowed[0] in e["miou"], f"{e['method']}: no headline mIoU{allowed[0]}"
        for value in [*e["miou"].values(), *e["iou"].values()]:
            assert isinstance(value, (int, float)) and 0 <= value <= 100, (e["method"], value)


def test_per_class_rows_cover_exactly_the_headline_subset(entries):
    for e in entries:
        if e["iou"]:
            headline = BENCHMARK_SUBSETS[e["benchmark"]][0]
            assert list(e["iou"]) == subset_names(headline), e["method"]


def test_per_class_rows_average_to_their_published_headlines(entries):
    checked = 0
    for e in entries:
        if e["iou"]:
            assert mean_mismatches(e) == [], (e["benchmark"], e["method"], mean_mismatches(e))
            checked += 1
    assert checked >= 5  # the transcription check is not vacuous


def test_the_transcription_check_catches_a_typo(entries):
    row = next(e for e in entries if e["iou"] and e["benchmark"] == "synthia2cs")
    assert mean_mismatches(row) == []
    broken = copy.deepcopy(row)
    broken["iou"]["traffic light"] += 11.0  # one digit mistyped, as in a known third-party copy
    assert any(m.startswith("mIoU16") for m in mean_mismatches(broken))
    dropped = copy.deepcopy(row)
    del dropped["iou"]["wall"]
    assert any("missing" in m for m in mean_mismatches(dropped))


def test_synthia_rows_state_their_16_class_convention(entries):
    for e in entries:
        if e["benchmark"] == "synthia2cs":
            assert "convention" in e or any("convention" in c for c in e["caveats"]), e["method"]
            assert e.get("convention") in (None, "A", "B"), e["method"]


def test_rows_that_are_not_deeplabv2_say_so(entries):
    for e in entries:
        if not e["architecture"].startswith("DeepLabV2"):
            assert any("architecture" in c for c in e["caveats"]), e["method"]


def test_ensembles_and_val_selected_numbers_are_flagged(entries):
    adv_minent = [e for e in entries if e["method"] == "AdvEnt+MinEnt"]
    assert {e["benchmark"] for e in adv_minent} == {"gta2cs", "synthia2cs"}
    for e in adv_minent:
        assert any("two-model ensemble" in c for c in e["caveats"])
        assert any("best snapshot" in c for c in e["caveats"])
    asn = next(e for e in entries if e["method"] == "AdaptSegNet")
    assert any("2 ASPP branches" in c for c in asn["caveats"])
    assert any("COCO" in c for c in asn["caveats"])
    cbst = next(e for e in entries if e["method"] == "CBST")
    assert "CRST" in cbst["source"] and cbst["repository"] == "yzou2/CRST"


def test_a_16_class_row_reaches_the_leaderboard_frame_with_its_own_ious():
    frame = reported_frame("synthia2cs")
    row = frame[frame.method == "AdvEnt+MinEnt"].iloc[0]
    assert row[miou_col("16")] == pytest.approx(41.2) and row[miou_col("13")] == pytest.approx(48.0)
    assert row[iou_col("road")] == pytest.approx(85.6)
    assert math.isnan(row[iou_col("terrain")])  # not a SYNTHIA class: no number, not 0
