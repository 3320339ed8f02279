"""`udabench plot` (issue 17): PNG, PDF and SVG, any number of runs or configurations with error
bars over seeds, --overwrite, paper sizes, and the run store's evidence check."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from matplotlib.text import Text

from tests.results_kit import invoke, make_run, synthetic_matrices
from udabench.results import pictures
from udabench.results.view import open_view
from udabench.taxonomy import CLASS_NAMES, SUBSETS


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(5)
    out = tmp_path / "runs"
    for s in range(3):
        make_run(out, "adversarial", s, synthetic_matrices(rng, 10, 0.5 + 0.1 * s), config="3120c03d9a11", name="advent")
        make_run(out, "source-only", s, synthetic_matrices(rng, 10, 0.5), config="50aa77110000")
    make_run(out, "clst", 0, synthetic_matrices(rng, 10, 0.7), config="c1c1c1c1c1c1")
    return out


def _svg_panels(path) -> int:
    return len(re.findall(r'<g id="axes_\d+"', path.read_text()))


def test_any_number_of_configurations_as_svg_pdf_and_png(root, tmp_path):
    three = tmp_path / "three.svg"
    result = invoke("plot", "advent", "source-only", "clst", "--out", three, "--output-dir", root)
    assert result.exit_code == 0, result.output
    text = three.read_text()
    assert text.startswith("<?xml") and _svg_panels(three) == 1  # N != 2: the bars alone
    for label in ("advent: mIoU19", "source-only: mIoU19", "clst: mIoU19", "(n=3)"):
        assert label in text
    two = tmp_path / "two.pdf"
    assert invoke("plot", "advent", "clst", "--out", two, "--output-dir", root).exit_code == 0
    data = two.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    svg2 = tmp_path / "two.svg"
    invoke("plot", "advent", "clst", "--out", svg2, "--output-dir", root)
    assert _svg_panels(svg2) == 2  # two sides: bars and A - B
    png = tmp_path / "one.png"
    assert invoke("plot", "source-only", "--out", png, "--output-dir", root).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_run = tmp_path / "run.svg"
    run_dir = next((root / "minicity-gta2cs" / "clst").iterdir())
    assert invoke("plot", run_dir, "--out", one_run).exit_code == 0
    assert _svg_panels(one_run) == 3  # one run: bars + loss curves + evaluation


def test_error_bars_are_the_std_over_seeds(root):
    records = [r for r in open_view(root).records if r["method"] == "adversarial"]
    fig = pictures.classes_figure([("advent", records)], "page")
    (ax,) = fig.axes
    bars = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    assert len(bars) == 19
    road = [r["iou"]["road"] for r in records]
    heights = [c.patches[0].get_height() for c in bars]
    assert heights[0] == pytest.approx(np.mean(road))
    segment = bars[0].errorbar.lines[2][0].get_segments()[0]  # the vertical line of road's error bar
    assert segment[1][1] - segment[0][1] == pytest.approx(2 * np.std(road, ddof=1))


@pytest.mark.parametrize("size,width", [("column", 3.4), ("page", 7.0)])
def test_paper_sizes_stay_readable(root, size, width):
    records = open_view(root).records
    sides = [(m, [r for r in records if r["method"] == m]) for m in ("adversarial", "source-only", "clst")]
    for fig in (pictures.classes_figure(sides, size), pictures.classes_figure(sides[:2], size),
                pictures.run_figure(records[0], [{"step": 5, "loss/model": 1.0}], size)):
        assert fig.get_figwidth() == pytest.approx(width)
        sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip()]
        assert min(sizes) >= 6  # points at print size
        assert not any(t.get_text().startswith(records[0]["benchmark"]) for t in fig.texts)  # caption's job


def test_convention_b_plots_the_headline_classes(tmp_path):
    rng = np.random.default_rng(2)
    out = tmp_path / "runs"
    run = make_run(out, "a", 0, synthetic_matrices(rng, 10, 0.6), modern=True, benchmark="minicity-synthia2cs",
                   subsets=("16", "13"), convention="B", spec="syn000000001")
    record = open_view(out).records[0]
    fig = pictures.classes_figure([("a", [record])], "screen")
    heights = [c.patches[0].get_height() for c in fig.axes[0].containers]
    conv = json.loads((run / "result.json").read_text())["iou_convention"]
    assert heights == pytest.approx([conv[CLASS_NAMES[i]] for i in SUBSETS["16"]])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(labels) == 16 and "wall*" in labels and "road" in labels  # * : not in mIoU13


def test_overwrite_formats_and_gone_runs(root, tmp_path):
    target = tmp_path / "c.png"
    assert invoke("plot", "advent", "--out", target, "--output-dir", root).exit_code == 0
    first = target.read_bytes()
    refused = invoke("plot", "clst", "--out", target, "--output-dir", root)
    assert refused.exit_code == 2 and "already exists" in refused.stderr and target.read_bytes() == first
    assert invoke("plot", "clst", "--out", target, "--overwrite", "--output-dir", root).exit_code == 0
    assert target.read_bytes() != first
    bad = invoke("plot", "clst", "--out", tmp_path / "c.jpg", "--output-dir", root)
    assert bad.exit_code == 2 and "charts are PNG, PDF or SVG" in bad.stderr
    gone = next((root / "minicity-gta2cs" / "clst").iterdir())
    shutil.rmtree(gone)
    result = invoke("plot", gone.name, "--out", tmp_path / "d.png", "--output-dir", root)
    assert result.exit_code == 2 and f"run {gone.name} is gone" in result.stderr
    assert "left out 1 indexed run(s)" in result.stderr
