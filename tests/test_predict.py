"""``udabench predict`` (prediction PNGs) and ``udabench plot`` (charts).

Fast tests use hand-made class maps and records; the slow ones train two tiny MiniCity runs and
check that the exported labelIds re-score exactly to the run's own result.json, through
``udabench score`` and through the official Cityscapes evaluator when it is installed.
"""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from udabench.cli import main
from udabench.data.pngio import read_png, read_png_info, write_png
from udabench.errors import DataError, UserError
from udabench.results import pictures
from udabench.results.predict import (
    _write_one, check_out_dir, city_of, colorize, overlay, relative_path, select, side_by_side,
    to_label_ids,
)
from udabench.taxonomy import CLASS_NAMES, CLASSES, PALETTE
from tests.helpers import tiny_toml

# -- pixels ------------------------------------------------------------------------------------
# Every trainId and the ignore value, in a 4x5 map (row-major).
CLASS_MAP = torch.tensor(list(range(19)) + [255], dtype=torch.uint8).reshape(4, 5)


def test_colorize_uses_the_official_palette():
    rgb = colorize(CLASS_MAP)
    assert rgb.shape == (3, 4, 5) and rgb.dtype == torch.uint8
    assert rgb[:, 0, 0].tolist() == [128, 64, 128]  # road
    assert rgb[:, 2, 3].tolist() == [0, 0, 142]  # trainId 13, car
    assert rgb[:, 3, 3].tolist() == [119, 11, 32]  # trainId 18, bicycle
    assert rgb[:, 3, 4].tolist() == [0, 0, 0]  # ignore is black
    for t in range(19):
        r, c = divmod(t, 5)
        assert tuple(rgb[:, r, c].tolist()) == CLASSES[t].color == tuple(PALETTE[t])


def test_label_ids_for_the_official_evaluator():
    ids = to_label_ids(CLASS_MAP).flatten().tolist()
    assert ids == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0]


def test_overlay_is_a_half_blend():
    image = torch.tensor([10, 20, 31], dtype=torch.uint8).reshape(3, 1, 1)
    road = colorize(torch.zeros(1, 1, dtype=torch.uint8))
    # (10+128)/2, (20+64)/2, (31+128)/2 = 79.5 -> 80
    assert overlay(image, road).flatten().tolist() == [69, 42, 80]
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 6, 7), generator=gen, dtype=torch.uint8)
    col = colorize(torch.randint(0, 19, (6, 7), generator=gen).to(torch.uint8))
    mix = overlay(img, col).int()
    assert (2 * mix - img.int() - col.int()).abs().max() <= 1
    with pytest.raises(ValueError):
        overlay(img, col[:, :5])


def test_side_by_side_and_paths():
    a, b = torch.zeros(3, 4, 5, dtype=torch.uint8), torch.ones(3, 4, 6, dtype=torch.uint8)
    out = side_by_side(a, b, a)
    assert out.shape == (3, 4, 5 + 4 + 6 + 4 + 5)
    assert (out[:, :, 5:9] == 255).all() and (out[:, :, 9:15] == 1).all()
    assert city_of("pixelburg_000003_000019") == "pixelburg"
    assert city_of("bad_homburg_000003_000019") == "bad_homburg"
    assert city_of("00042") == ""
    assert relative_path("berlin_000000_000019") == Path("berlin/berlin_000000_000019.png")
    assert relative_path("00042") == Path("00042.png")


def test_written_colour_pngs_hold_palette_colours(tmp_path):
    image = torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(3, 4, 5) * 4
    image_path = tmp_path / "img.png"
    write_png(image_path, image)
    label = CLASS_MAP.flip(1)
    n = _write_one(tmp_path / "stage", "color", "berlin_000000_000019", CLASS_MAP, image_path, label)
    assert n == 3
    rel = Path("berlin/berlin_000000_000019.png")
    got = read_png(tmp_path / "stage" / "color" / rel)
    expected = np.array(PALETTE)[CLASS_MAP.numpy()].transpose(2, 0, 1)
    assert np.array_equal(got.numpy(), expected)
    blend = read_png(tmp_path / "stage" / "overlay" / rel).int()
    assert (2 * blend - image.int() - torch.from_numpy(expected).int()).abs().max() <= 1
    panel = read_png(tmp_path / "stage" / "side_by_side" / rel)
    assert panel.shape == (3, 4, 3 * 5 + 8)
    assert np.array_equal(panel[:, :, 18:].numpy(), np.array(PALETTE)[label.numpy()].transpose(2, 0, 1))
    assert _write_one(tmp_path / "cs", "cityscapes", "berlin_000000_000019", CLASS_MAP, image_path, None) == 1
    assert read_png(tmp_path / "cs" / rel)[0].flatten().tolist()[:3] == [7, 8, 11]


def test_select_images():
    ids = ["a_000000_000001", "a_000000_000002", "b_000000_000003"]
    assert select(ids) == [0, 1, 2]
    assert select(ids, limit=2) == [0, 1]
    assert select(ids, ("b_000000_000003", "a_000000_000001")) == [2, 0]
    assert select(ids, ("a_000000_000002_leftImg8bit.png,b_000000_000003",), limit=1) == [1]
    with pytest.raises(UserError, match="--images zz_000000_000009: no such image in the split"):
        select(ids, ("zz_000000_000009",))


def test_existing_output_is_refused(tmp_path):
    check_out_dir(tmp_path / "new")  # does not exist: fine
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.png").write_bytes(b"keep")
    with pytest.raises(UserError, match="already exists and is not empty"):
        check_out_dir(tmp_path / "full")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        check_out_dir(tmp_path / "file")
    assert (tmp_path / "full" / "x.png").read_bytes() == b"keep"


# -- charts ------------------------------------------------------------------------------------
def _record(iou_scale=1.0, **extra):
    iou = {n: float((i * 37) % 90 + 5) * iou_scale for i, n in enumerate(CLASS_NAMES)}
    iou["train"] = math.nan
    finite = [v for v in iou.values() if not math.isnan(v)]
    rec = {"run_id": "r1", "method": "source-only", "benchmark": "minicity-gta2cs", "spec_hash": "abc123",
           "seed": 0, "iters": 40, "subsets": ["19"], "headline": "19", "convention": "A",
           "miou": {"19": sum(finite) / len(finite)}, "iou": iou,
           "eval": {"input_size": [128, 256], "flip": False, "scales": [1.0]}}
    rec.update(extra)
    return rec


def _colours(png: bytes, tmp_path: Path) -> set:
    path = tmp_path / "chart.png"
    path.write_bytes(png)
    img = read_png(path)
    return {tuple(c) for c in img[:3].reshape(3, -1).T.unique(dim=0).tolist()}, img.shape


def test_run_chart_is_a_png_of_the_expected_size(tmp_path):
    metrics = [{"step": s, "loss/model": 3.0 - s / 20, "lr": 0.01} for s in range(5, 45, 5)]
    metrics += [{"step": 20, "eval/mIoU19": 30.0}]
    png = pictures.run_chart(_record(), metrics)
    assert len(png) > 20_000
    colours, shape = _colours(png, tmp_path)
    assert shape[1:] == (pictures.RUN_PIXELS[1], pictures.RUN_PIXELS[0]) == (900, 1200)
    # every class with a bar is drawn in its official colour (train is n/a: no bar)
    drawn = {c.color for c in CLASSES if c.name != "train"}
    assert drawn <= colours
    assert CLASSES[16].color not in colours


def test_comparison_chart(tmp_path):
    a = [_record()]
    b = [_record(0.5, run_id="r2", seed=1), _record(0.7, run_id="r3", seed=2)]
    png = pictures.comparison_chart("A", a, "B", b)
    colours, shape = _colours(png, tmp_path)
    assert shape[1:] == (800, 1200) and len(png) > 20_000
    assert {c.color for c in CLASSES if c.name != "train"} <= colours  # A's solid bars
    assert (46, 125, 50) in colours  # positive deltas (A beats B everywhere) are green
    assert (198, 40, 40) not in colours  # ... and none is red
    with pytest.raises(UserError, match="plot needs one benchmark"):
        pictures.comparison_chart("A", a, "C", [_record(benchmark="minicity-synthia2cs")])


def test_write_chart_never_overwrites(tmp_path):
    target = tmp_path / "sub" / "c.png"
    pictures.write_chart(target, b"\x89PNG first")
    with pytest.raises(UserError, match="already exists"):
        pictures.write_chart(target, b"second")
    assert target.read_bytes() == b"\x89PNG first"
    with pytest.raises(UserError, match="ending in .png"):
        pictures.write_chart(tmp_path / "c.jpg", b"")


def test_read_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert pictures.read_metrics(path) == []
    path.write_text('{"step": 1, "loss/model": 2.0}\n\n{"step": 2\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:3 is not valid JSON"):
        pictures.read_metrics(path)


# -- CLI arguments -------------------------------------------------------------------------------
def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error_line(result, text):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output


def test_bad_arguments_give_one_line(tmp_path):
    _one_error_line(_cli("predict", tmp_path), "is not a udabench run directory")
    _one_error_line(_cli("predict", tmp_path / "nope"), "is not a run directory")
    _one_error_line(_cli("plot", tmp_path), "is not a finished run directory")
    _one_error_line(_cli("plot", "a", "b", "c", "--out", tmp_path / "x.jpg"), "charts are PNG, PDF or SVG")
    assert _cli("predict", tmp_path, "--format", "jpeg").exit_code == 2


# -- a tiny trained run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    (base / "udabench.toml").write_text(tiny_toml(base / "data", base / "runs", iters=3, log_every=1, checkpoint_every=3))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.delenv("UDABENCH_DATA", raising=False)
        for seed in (0, 1):
            r = _cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--seed", seed)
            assert r.exit_code == 0, r.output
        runs = sorted((base / "runs" / "minicity-gta2cs" / "source-only").iterdir(),
                      key=lambda p: json.loads((p / "config.json").read_text())["seed"])
        yield base, runs, mp


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cityscapes_export_rescores_to_the_run_result(trained):
    from udabench.scoring import find_ground_truth, score_predictions

    base, (run, _), _ = trained
    r = _cli("predict", run, "--format", "cityscapes")
    assert r.exit_code == 0, r.output
    out = run / "predictions" / "cityscapes"
    record = json.loads((run / "result.json").read_text())
    files = sorted(out.rglob("*.png"))
    assert [f"{p.parent.name}/{p.name}" for p in files] == sorted(
        f"{p.parent.name}/{p.name.replace('_gtFine_labelIds', '')}"
        for p in (base / "data").rglob("gtFine/val/*/*_gtFine_labelIds.png"))
    assert len(files) == record["eval"]["images"] == 3
    values = set(np.unique(np.concatenate([read_png(p).numpy().ravel() for p in files])).tolist())
    assert values <= {c.label_id for c in CLASSES} and len(values) >= 2

    gt = find_ground_truth(next((base / "data").rglob("gtFine")).parent)
    result = score_predictions(out, gt, "labelid", ("19",), "A", workers=1)
    iou = {n: v * 100 for n, v in result.score.iou.items()}
    same = lambda a, b: a == b or (math.isnan(a) and math.isnan(b))  # noqa: E731
    assert all(same(iou[n], record["iou"][n]) for n in CLASS_NAMES), (iou, record["iou"])
    assert result.score.miou["19"] * 100 == record["miou"]["19"]
    # the per-image matrices of the run equal those of the exported files, image by image
    saved = np.load(run / "per_image.npz")
    order = {i: k for k, i in enumerate(result.ids)}
    for image_id, matrix in zip(saved["ids"], saved["matrices"]):
        assert np.array_equal(result.per_image[order[str(image_id)]][:19, :19], matrix)

    r = _cli("score", out, "--benchmark", "minicity-gta2cs", "--encoding", "labelid", "--format", "json")
    assert r.exit_code == 0, r.output
    scored = json.loads(r.output)
    assert scored["miou"] == record["miou"] and scored["void_predictions"] == 0

    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    args = copy.copy(ev.args)
    args.evalInstLevelScore, args.quiet, args.JSONOutput = False, True, False
    args.predictionPath, args.predictionWalk = str(out), None
    gts = [str(p) for p in gt.values()]
    official = ev.evaluateImgLists([ev.getPrediction(args, g) for g in gts], gts, args)["classScores"]
    for n in CLASS_NAMES:
        if math.isnan(record["iou"][n]):
            assert math.isnan(official[n]), n
        else:
            assert official[n] * 100 == pytest.approx(record["iou"][n], rel=1e-12, abs=1e-12), n


@pytest.mark.slow
def test_colour_export_selection_and_refusal(trained):
    base, (run, _), _ = trained
    stems = sorted(p.name.replace("_gtFine_labelIds.png", "")
                   for p in (base / "data").rglob("gtFine/val/*/*_gtFine_labelIds.png"))
    out = base / "colours"
    r = _cli("predict", run, "--images", stems[1], "--images", stems[2], "--limit", "1", "--out", out)
    assert r.exit_code == 0, r.output
    rel = relative_path(stems[1])
    assert sorted(_files(out)) == [f"{k}/{rel}" for k in ("color", "overlay", "side_by_side")]
    colour = read_png(out / "color" / rel)
    info = read_png_info(next((base / "data").rglob(f"gtFine/val/*/{stems[1]}_gtFine_labelIds.png")))
    assert colour.shape == (3, info.height, info.width)
    assert read_png(out / "side_by_side" / rel).shape == (3, info.height, 3 * info.width + 8)
    # the colour map is the labelId export, coloured: decode both to trainIds and compare
    from udabench.taxonomy import LABEL_ID_TO_TRAIN_ID, color_to_train_id

    cs = base / "cs-one"
    assert _cli("predict", run, "--images", stems[1], "--format", "cityscapes", "--out", cs).exit_code == 0
    train_ids = LABEL_ID_TO_TRAIN_ID[read_png(cs / rel)[0].numpy()]
    assert np.array_equal(color_to_train_id(colour.permute(1, 2, 0).numpy()), train_ids)

    before = _files(out)
    _one_error_line(_cli("predict", run, "--out", out), "already exists and is not empty")
    assert _files(out) == before
    _one_error_line(_cli("predict", run, "--images", "nowhere_000000_000000", "--out", base / "x"),
                    "--images nowhere_000000_000000: no such image")
    assert not (base / "x").exists() and not list(base.glob(".x.partial-*"))


@pytest.mark.slow
def test_plot_one_run_and_two(trained):
    base, (run0, run1), mp = trained
    r = _cli("plot", run0, "--out", base / "one.png")
    assert r.exit_code == 0, r.output
    info = read_png_info(base / "one.png")
    assert (info.width, info.height) == pictures.RUN_PIXELS and (base / "one.png").stat().st_size > 20_000
    _one_error_line(_cli("plot", run0, "--out", base / "one.png"), "already exists")
    r = _cli("plot", run0)  # default: inside the run directory
    assert r.exit_code == 0, r.output
    assert len(list((run0 / "plots").glob("summary-*.png"))) == 1
    # by run id, through the run store
    r = _cli("plot", run0.name, run1.name, "--out", base / "two.png")
    assert r.exit_code == 0, r.output
    info = read_png_info(base / "two.png")
    assert (info.width, info.height) == pictures.COMPARE_PIXELS
    _one_error_line(_cli("plot", "source-only", "no-such-method"), "unknown method or run 'no-such-method'")


# -- the official evaluator's command line on a MiniCity run ---------------------------------------
def _numpy_for_the_official_evaluator() -> str:
    """A folder to put first on PYTHONPATH so that numpy < 2.4 is imported ('' when the installed
    numpy is older): cityscapesscripts' instance-level evaluation, which its command line runs,
    calls np.in1d, removed in numpy 2.4. Installed once with pip into a cache folder; only the
    evaluator's subprocess sees it, so udabench itself is tested with the numpy it runs on."""
    import os
    import subprocess
    import sys

    if tuple(int(v) for v in np.__version__.split(".")[:2]) < (2, 4):
        return ""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "udabench-tests" / \
        f"numpy-below-2.4-py{sys.version_info.major}{sys.version_info.minor}"
    if not (cache / "numpy").is_dir():
        partial = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--disable-pip-version-check", "--target", str(partial), "numpy<2.4"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"cannot install numpy<2.4 for the official evaluator: "
                        f"{(r.stderr.strip().splitlines() or ['pip failed'])[-1]}")
        if not (cache / "numpy").is_dir():
            os.replace(partial, cache)
    return str(cache)


@pytest.mark.slow
def test_official_evaluator_command_line_agrees_with_result_json(trained, tmp_path):
    """csEvalPixelLevelSemanticLabeling as its users run it (environment variables, no arguments,
    instance-level scores ON, which opens each *_gtFine_instanceIds.png) on a MiniCity run's
    exported predictions: every class IoU equals result.json."""
    import os
    import subprocess
    import sys

    pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    base, (run, _), _ = trained
    target = next((base / "data").rglob("gtFine")).parent
    assert sorted(target.rglob("gtFine/val/*/*_gtFine_instanceIds.png"))  # MiniCity writes them
    out = tmp_path / "results"
    assert _cli("predict", run, "--format", "cityscapes", "--out", out).exit_code == 0
    env = dict(os.environ, CITYSCAPES_DATASET=str(target), CITYSCAPES_RESULTS=str(out),
               CITYSCAPES_EXPORT_DIR=str(tmp_path))
    extra = _numpy_for_the_official_evaluator()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH", "")) if p)
    r = subprocess.run([sys.executable, "-m", "cityscapesscripts.evaluation."
                        "evalPixelLevelSemanticLabeling"], env=env, capture_output=True,
                       text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    official = json.loads((tmp_path / "resultPixelLevelSemanticLabeling.json").read_text())
    record = json.loads((run / "result.json").read_text())
    for name in CLASS_NAMES:
        theirs = official["classScores"][name]
        if math.isnan(record["iou"][name]):
            assert theirs is None or math.isnan(theirs), name
        else:
            assert theirs * 100 == pytest.approx(record["iou"][name], rel=1e-12, abs=1e-12), name
    # the instance-level part ran on MiniCity's objects: a score for a class it draws
    assert any(isinstance(official["classInstScores"][n], float)
               and not math.isnan(official["classInstScores"][n]) for n in ("car", "person"))


# -- the size rule: a validation label whose size differs from its image ----------------------------
def _odd_label(path: Path, extra: tuple[int, int] = (6, 10)) -> tuple[int, int]:
    """Rewrite a labelIds file at a larger size (nearest: the same scene); returns its (H, W)."""
    from udabench.data.transforms import resize_label

    ids = read_png(path)[0]
    size = (ids.shape[0] + extra[0], ids.shape[1] + extra[1])
    write_png(path, resize_label(ids, size))
    return size


def test_eval_predict_and_score_agree_on_an_odd_sized_label(tiny_cityscapes, copy_tree, tmp_path,
                                                           one_torch_thread):
    """One rule: the evaluator scores each label at its own size, predict writes at it, score
    requires it, verify reports the pair; all three give the same matrix."""
    from types import SimpleNamespace

    from udabench.data import build_dataset
    from udabench.data.transforms import ResizeImage
    from udabench.data.verify import verify_dataset
    from udabench.engine.evaluator import EvalSettings, evaluate
    from udabench.results.predict import export_predictions
    from udabench.scoring import score_predictions

    root = copy_tree(tiny_cityscapes)
    odd = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[2]
    size = _odd_label(odd)
    val = build_dataset("cityscapes", root, "val", transform=ResizeImage((16, 32)), manifest=None)
    stem = odd.name.replace("_gtFine_labelIds.png", "")
    assert tuple(val[val.ids.index(stem)]["label"].shape) == size  # never resized
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 19, 3, padding=1).eval()
    settings = EvalSettings((16, 32))
    evaluated = evaluate(net, val, settings, torch.device("cpu"), progress=False)
    run = SimpleNamespace(net=net, settings=settings, device=torch.device("cpu"), amp_dtype=None)
    export_predictions(run, val, list(range(len(val))), tmp_path / "pred", "cityscapes")
    written = next((tmp_path / "pred").rglob(f"{stem}.png"))
    assert read_png_info(written).height == size[0] and read_png_info(written).width == size[1]
    scored = score_predictions(tmp_path / "pred", root, "labelid", workers=1)
    np.testing.assert_array_equal(scored.matrix[:19, :19], evaluated.matrix)
    assert scored.matrix[:, 19].sum() == 0
    [problem] = verify_dataset("cityscapes", root).by_category("size mismatch")
    assert problem.path == odd and "scored at the label's own size" in problem.detail


@pytest.mark.slow
def test_odd_sized_val_label_through_the_cli(trained):
    """`udabench eval`, `predict --format cityscapes` and `score` on a MiniCity run whose val set
    has one label larger than its image agree exactly (runs last: it edits the shared tree)."""
    base, (run, _), _ = trained
    odd = sorted((base / "data").rglob("gtFine/val/*/*_gtFine_labelIds.png"))[0]
    original = odd.read_bytes()
    try:
        size = _odd_label(odd)
        r = _cli("eval", run)
        assert r.exit_code == 0, r.output
        record = json.loads(max((run / "evals").glob("*.json")).read_text())
        out = base / "odd-predictions"
        assert _cli("predict", run, "--format", "cityscapes", "--out", out).exit_code == 0
        stem = odd.name.replace("_gtFine_labelIds.png", "")
        written = next(out.rglob(f"{stem}.png"))
        assert (read_png_info(written).height, read_png_info(written).width) == size
        r = _cli("score", out, "--benchmark", "minicity-gta2cs", "--encoding", "labelid",
                 "--format", "json")
        assert r.exit_code == 0, r.output
        scored = json.loads(r.output)
        assert scored["miou"] == record["miou"]
        assert all(scored["iou"][n] == record["iou"][n] or (scored["iou"][n] is None and
                                                            math.isnan(record["iou"][n]))
                   for n in CLASS_NAMES)
    finally:
        odd.write_bytes(original)
