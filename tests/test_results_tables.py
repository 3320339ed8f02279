"""Paper-ready tables (issue 17): booktabs LaTeX, per-class then mIoU, --columns, footnotes as
table notes, bold only where unique and meaningful."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from udabench.cli import main
from udabench.errors import UserError
from udabench.results import tables
from udabench.results.aggregate import build_boards
from udabench.results.columns import parse_columns
from udabench.taxonomy import CLASS_NAMES

FIXTURE = Path(__file__).parent / "fixtures" / "run_records.json"
S1 = "aaaa11112222"


@pytest.fixture
def records():
    return json.loads(FIXTURE.read_text())


def _gta(records):
    """The S1 runs of the fixture as gta2cs runs, so the published rows join the table."""
    return [dict(r, benchmark="gta2cs") for r in records if r["spec_hash"] == S1]


def check_latex_structure(tex: str) -> None:
    """What a TeX engine would choke on: unbalanced environments or braces, rows whose cell count
    differs from the tabular's column spec, and rules other than booktabs'."""
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, name
    assert not stack
    unescaped = re.sub(r"\\[{}]", "", tex)
    assert unescaped.count("{") == unescaped.count("}")
    assert r"\hline" not in tex
    for spec, body in re.findall(r"\\begin\{tabular\}\{@\{\}(\w+)@\{\}\}(.*?)\\end\{tabular\}", tex, re.S):
        rows = [line for line in body.splitlines() if line.endswith(r"\\")]
        assert rows and all(len(re.split(r"(?<!\\)&", row)) == len(spec) for row in rows)
        assert body.lstrip().startswith(r"\toprule") and body.rstrip().endswith(r"\bottomrule")


def test_latex_is_booktabs_in_papers_order_without_bookkeeping_columns(records):
    boards, warnings = build_boards(_gta(records))
    tex = tables.to_latex(boards, warnings, per_class=True)
    check_latex_structure(tex)
    header = next(line for line in tex.splitlines() if line.startswith("method &"))
    cells = [c.strip(" \\") for c in header.split("&")]
    assert cells[0] == "method" and cells[1] == "n"  # n varies by row (3 and 1), so it is shown
    assert cells[2:21] == ["road", "sidew.", "build.", "wall", "fence", "pole", "light", "sign", "veget.", "terrain",
                           "sky", "person", "rider", "car", "truck", "bus", "train", "motor.", "bike"]
    assert cells[21:] == ["mIoU19"]  # per-class first, then the mean, as in the papers
    for word in ("kind", "config", "train-time", "GPU-h", "img/s", "peak-mem"):
        assert word not in cells


def test_latex_reference_footnotes_are_table_notes(records):
    boards, _ = build_boards(_gta(records))
    tex = tables.to_latex(boards, [])
    caption = next(line for line in tex.splitlines() if line.startswith(r"\caption{"))
    assert "Tsai" not in caption and "caveats" not in caption
    assert r"Source only\textsuperscript{a}" in tex and r"AdaptSegNet\textsuperscript{" in tex
    after = tex.split(r"\end{tabular}")[1]
    assert r"\textsuperscript{a}\,Source only: Tsai et al., CVPR 2018" in after
    assert "two-model ensemble" in after and r"\end{minipage}" in after
    assert tex.split(r"Source only\textsuperscript{a}")[0].rstrip().endswith(r"\midrule")  # runs, rule, published


def _board_with(values: dict[str, float], records) -> str:
    """A one-protocol table whose UDA configurations score ``values`` (method -> mIoU19)."""
    base = records[0]
    rows = []
    for i, (method, miou) in enumerate(values.items()):
        r = copy.deepcopy(base)
        r.update(method=method, config_hash=f"cfg{i:09d}", miou={"19": miou}, run_id=f"r{i}")
        r["iou"] = {c: miou for c in CLASS_NAMES}
        rows.append(r)
    boards, _ = build_boards(rows)
    return tables.to_markdown(boards, [])


def test_bold_only_where_unique_and_meaningful(records):
    assert "**44.0**" in _board_with({"a": 44.0, "b": 41.0}, records)
    tie = _board_with({"a": 44.0, "b": 44.0, "c": 30.0}, records)
    assert "**44.0**" not in tie and "**30.0**" not in tie
    shown_tie = _board_with({"a": 44.01, "b": 43.99}, records)  # equal at the shown precision
    assert "**44.0**" not in shown_tie
    zeros = _board_with({"a": 0.0, "b": 0.0}, records)
    assert "**0.0**" not in zeros
    assert "**" not in _board_with({"only": 50.0}, records).split("\n- ")[0]  # one row: nothing to beat
    boards, _ = build_boards(_gta(records))
    tex = tables.to_latex(boards, [])
    assert r"\textbf{44.0}" in tex and r"\textbf{60.0}" not in tex  # best UDA run, not the oracle
    assert r"\textbf{68.3}" not in tex  # nor a published row


def test_columns_choice(records):
    boards, _ = build_boards(_gta(records))
    md = tables.to_markdown(boards, [], columns=parse_columns("method,road,mIoU19,n"))
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert header == "| method | road | mIoU19 | n |"
    grouped = tables.to_markdown(boards, [], columns=parse_columns("method,kind,miou,compute"))
    assert "| method | kind | mIoU19 | train-time | GPU-h | img/s | peak-mem |" in grouped
    tex = tables.to_latex(boards, [], columns=parse_columns("method,kind,config,classes,miou"))
    check_latex_structure(tex)
    assert "method & kind & config & road" in tex
    csv = tables.to_csv(boards, columns=parse_columns("method,mIoU19")).splitlines()
    assert csv[0] == "kind,benchmark,spec_hash,val_set,method,mIoU19,mIoU19 std"
    for bad, hint in (("method,roads", "did you mean 'road'"), ("", "name at least one column")):
        with pytest.raises(UserError, match=hint):
            parse_columns(bad)
    result = CliRunner().invoke(main, ["leaderboard", "--columns", "method,mIoU20", "--output-dir", "/nonexistent"])
    assert result.exit_code == 2 and "unknown column 'mIoU20'" in result.stderr


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine installed (pdflatex); "
                    "the LaTeX tables are checked structurally by the other tests")
def test_latex_compiles(records, tmp_path):
    boards, warnings = build_boards(_gta(records) + records)  # published rows, 16/13 classes, two specs
    body = "\n".join([tables.to_latex(boards, warnings, per_class=True), tables.to_latex([], []),
                      tables.to_latex(boards, [], columns=parse_columns("method,kind,config,compute,miou"))])
    doc = "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n" \
          "\\begin{document}\n" + body + "\n\\end{document}\n"
    (tmp_path / "t.tex").write_text(doc)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
