"""udabench eval of weights trained anywhere, and of a run's other checkpoints."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from udabench.cli import main
from udabench.engine.checkpoint import load_checkpoint
from udabench.errors import UserError
from tests.helpers import tiny_toml


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def work(tmp_path, tmp_path_factory, monkeypatch):
    data = tmp_path_factory.getbasetemp() / "external-data"
    (tmp_path / "udabench.toml").write_text(tiny_toml(data, tmp_path / "runs", iters=2))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UDABENCH_DATA", raising=False)
    return tmp_path


def only(work, method):
    [run] = list((work / "runs" / "minicity-gta2cs" / method).iterdir())
    return run


@pytest.mark.slow
def test_a_udabench_checkpoint_copied_anywhere_scores_like_its_run(work):
    assert cli("run", "source-only", "-b", "minicity-gta2cs", "--set", "train.eval_every=1",
               "--set", "train.best_checkpoint=true").exit_code == 0
    run = only(work, "source-only")
    shutil.copy(run / "checkpoints" / "last.pt", work / "weights.pt")
    r = cli("eval", "--checkpoint", work / "weights.pt", "-b", "minicity-gta2cs", "--name", "copy")
    assert r.exit_code == 0, r.output
    ext = only(work, "external")
    a, b = (json.loads((d / "result.json").read_text()) for d in (run, ext))
    assert a["iou"] == b["iou"] and a["miou"] == b["miou"]
    assert b["external_weights"]["format"] == "udabench" and b["eval"]["checkpoint"] == "external weights"
    assert b["eval"]["val_fingerprint"] == a["eval"]["val_fingerprint"]
    # indexed: the leaderboard shows it, marked by its method
    board = json.loads(cli("leaderboard", "-b", "minicity-gta2cs", "--format", "json").output)
    assert "external" in json.dumps(board)
    # a run's best.pt is scored and labelled as model selection on the target labels
    r = cli("eval", run, "--checkpoint", "best")
    assert r.exit_code == 0 and "model selection" in r.output, r.output
    [best] = list((run / "evals").glob("*best*.json"))
    assert json.loads(best.read_text())["eval"]["checkpoint"] == "best (target-label model selection)"


@pytest.mark.slow
def test_a_deeplab_release_layout_scores_like_the_run_it_came_from(work):
    """The classic DeepLabV2 release layout (AdaptSegNet/ADVENT/CRST/DACS): ResNet keys, classifier
    layer5.conv2d_list.<i>, wrapped in DataParallel's module. prefix."""
    from udabench.models import SegmenterConfig, build_segmenter

    body = build_segmenter(SegmenterConfig(backbone="resnet50", init="scratch"), 19).backbone.body
    torch.save({f"Scale.{k}": v for k, v in body.state_dict().items()}, work / "init.pth")
    r = cli("run", "source-only", "-b", "minicity-gta2cs", "--set", "model.backbone=resnet50",
            "--set", f'model.init="caffe-deeplab:{work / "init.pth"}"')
    assert r.exit_code == 0, r.output
    run = only(work, "source-only")
    state = load_checkpoint(run / "checkpoints" / "last.pt")["method"]
    release = {}
    for key, value in state.items():
        if key.startswith("segmenter.backbone.body."):
            release["module." + key[len("segmenter.backbone.body."):]] = value
        elif key.startswith("segmenter.head.convs."):
            release["module.layer5.conv2d_list." + key[len("segmenter.head.convs."):]] = value
    torch.save(release, work / "release.pth")
    r = cli("eval", "--checkpoint", work / "release.pth", "-b", "minicity-gta2cs",
            "--set", "model.backbone=resnet50")
    assert r.exit_code == 0, r.output
    a, b = (json.loads((d / "result.json").read_text()) for d in (run, only(work, "external")))
    assert b["external_weights"]["format"] == "deeplab" and a["miou"] == pytest.approx(b["miou"])
    assert a["iou"] == pytest.approx(b["iou"], nan_ok=True)


def test_weights_without_a_classifier_are_an_initialisation(tmp_path):
    from udabench.engine.external import detect_format

    torch.save({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "r.pth")
    with pytest.raises(UserError, match="use them as model.init"):
        detect_format(tmp_path / "r.pth")
    torch.save({"layer6.conv2d_list.0.weight": torch.zeros(1)}, tmp_path / "d.pth")
    assert detect_format(tmp_path / "d.pth") == "deeplab"
    torch.save({"method": {}}, tmp_path / "u.pth")
    assert detect_format(tmp_path / "u.pth") == "udabench"


@pytest.mark.slow
def test_prediction_panels_put_runs_side_by_side_with_titles_and_a_legend(work):
    for seed in ("0", "1"):
        assert cli("run", "source-only", "-b", "minicity-gta2cs", "--seed", seed, "--name", f"s{seed}").exit_code == 0
    runs = sorted((work / "runs" / "minicity-gta2cs" / "source-only").iterdir())
    svg = work / "panels.svg"
    r = cli("predict", *runs, "--format", "panels", "--limit", "2", "--out", svg)
    assert r.exit_code == 0, r.output
    text = svg.read_text()
    assert text.count("<image") == 2 * 4  # 2 images x (image, ground truth, 2 runs)
    for title in ("ground truth", "s0 (", "s1 (", "road", "bicycle"):  # titles and the legend
        assert title in text, title
    pdf = work / "panels.pdf"
    assert cli("predict", *runs, "--format", "panels", "--limit", "3", "--out", pdf).exit_code == 0
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and data.count(b"/Subtype /Image") == 3 * 4
    r = cli("predict", *runs, "--format", "panels", "--out", pdf)  # never overwritten silently
    assert r.exit_code == 2 and "already exists" in r.stderr
    r = cli("predict", *runs)  # several runs need the panels format
    assert r.exit_code == 2 and "--format panels" in r.stderr
