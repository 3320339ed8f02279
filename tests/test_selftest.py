"""``udabench selftest``: the generated tree's odd parts, the probes, the figures, the JSON schema
and its documentation (fast), and the whole command at the real sizes on the CPU (slow)."""
from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from udabench.cli import main
from udabench.data.loaders import InfiniteLoader
from udabench.engine.trainer import Trainer
from udabench.ensemble import TemporalEnsemble
from udabench.minicity import MiniCityParams, write_cityscapes, write_gta5
from udabench.selftest import measure, probes
from udabench.selftest.datacheck import check_dataset, check_odd_pair, expected_nearest
from udabench.selftest.driver import run_job
from udabench.selftest.plan import SelftestOptions, plan_selftest
from udabench.selftest.probes import StepProbe, StepTimes
from udabench.selftest.report import SCHEMA, build_report
from udabench.selftest.tree import (OddPair, cityscapes_instance_ids, write_instance_ids,
                                    write_odd_gta5_pair)

REPO = Path(__file__).resolve().parents[1]


# -- a JSON Schema checker for the subset SCHEMA uses (jsonschema, when installed, cross-checks) --
def _is(value, kind: str) -> bool:
    return {"null": value is None, "boolean": isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "string": isinstance(value, str), "array": isinstance(value, list),
            "object": isinstance(value, dict)}[kind]


def schema_errors(value, schema, path="$") -> list[str]:
    if "oneOf" in schema:
        matching = [arm for arm in schema["oneOf"] if not schema_errors(value, arm, path)]
        return [] if len(matching) == 1 else [f"{path}: matches {len(matching)} oneOf arms"]
    errors = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, k) for k in kinds):
            return errors + [f"{path}: {type(value).__name__} is not {kinds}"]
    if isinstance(value, dict):
        errors += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected {key}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def assert_valid(report) -> None:
    assert schema_errors(report, SCHEMA) == []
    json.dumps(report, allow_nan=False)  # strict JSON
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.Draft202012Validator(SCHEMA).validate(report)


# -- the tree's additions to MiniCity ------------------------------------------------------------------
def test_instance_ids_number_objects_per_class_like_cityscapes():
    label = np.array([[7, 26, 26, 24], [26, 26, 11, 24], [7, 7, 26, 33]], np.uint8)
    inst = np.array([[3, 5, 5, 9], [8, 8, 0, 9], [0, 0, 5, 2]], np.uint16)
    expected = [[7, 26000, 26000, 24000], [26001, 26001, 11, 24000], [7, 7, 26000, 33000]]
    out = cityscapes_instance_ids(label, inst)
    assert out.dtype == np.uint16 and out.tolist() == expected  # road's instance 3 is not counted


def test_expected_nearest_known_answer():
    label = np.array([[0, 1], [2, 3], [4, 5]])
    # rows floor((2i+1)*3/8) = 0,1,1,2; cols floor((2j+1)*2/6) = 0,1,1
    assert expected_nearest(label, (4, 3)).tolist() == [[0, 1, 1], [2, 3, 3], [2, 3, 3], [4, 5, 5]]


def test_odd_gta5_pair_is_warned_recorded_and_resized_nearest(tmp_path):
    params = MiniCityParams(height=24, width=40)
    root = tmp_path / "gta5"
    write_gta5(root, params, 2)
    odd = write_odd_gta5_pair(root, params, 2)
    assert Image.open(odd.image).size == (40, 24)
    label = Image.open(odd.label)
    assert label.size == (40, 27) and label.mode == "P" and odd.label_size == (40, 27)
    check = check_odd_pair(odd, check_dataset("gta5", root), tmp_path / "prepared")
    assert check.ok and check.manifest_status == "resized_label"
    assert check.loader_label_size == [40, 24] and check.loader_matches_nearest
    # A pair whose label fits its image is not "handled as the odd pair": the check can fail.
    normal = OddPair("00001", root / "images" / "00001.png", root / "labels" / "00001.png",
                     (40, 24), (40, 24))
    fake = check_odd_pair(normal, check_dataset("gta5", root), tmp_path / "prepared2")
    assert not fake.verify_warned and fake.manifest_status == "ok" and not fake.ok


def test_instance_ids_file_is_16_bit_and_agrees_with_label_ids(tmp_path):
    params = MiniCityParams(height=96, width=192)
    write_cityscapes(tmp_path, params, 1, 2)
    for i in range(2):
        path = write_instance_ids(tmp_path, params, "val", i)
        inst = np.array(Image.open(path)).astype(np.int64)
        ids = np.array(Image.open(str(path).replace("instanceIds", "labelIds")))
        assert Image.open(path).mode.startswith("I;16") and inst.shape == ids.shape
        assert (np.where(inst >= 1000, inst // 1000, inst) == ids).all()
    assert (inst >= 1000).any()  # objects are numbered


# -- probes and figures ----------------------------------------------------------------------------------
def test_step_figures_known_answer():
    steps = [StepTimes(10.0, 5.0), StepTimes(2.0, 0.2), StepTimes(4.0, 0.2, 0.1, 0.3, 2),
             StepTimes(3.0, 0.6)]
    f = measure.step_figures(steps, warmup=1)
    assert f.measured_steps == 3 and f.s_per_iter == 3.0
    assert f.data_s_per_step == pytest.approx(1.0 / 3) and f.data_fraction == pytest.approx(1.0 / 9)
    assert f.ensemble_io_s_per_step == pytest.approx(0.4 / 3)
    assert f.ensemble_io_fraction == pytest.approx(0.4 / 9)
    assert measure.step_figures(steps[:2], warmup=1).ensemble_io_fraction is None
    assert [measure.warmup_steps(n) for n in (2, 9, 10, 30)] == [1, 1, 2, 6]
    assert measure.projected_seconds(1000, 0.5, 0.1, 500) == pytest.approx(550.0)


def test_read_losses_flags_non_finite_and_skips_eval_lines(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss/model": 2.5, "loss/discriminator": 0.7}\n'
                   '{"step": 1, "eval/mIoU19": 3.0}\n{"step": 2, "loss/model": 2.0}\n')
    read = measure.read_losses(log)
    assert read.finite and read.steps == 2 and read.last == {"model": 2.0, "discriminator": 0.7}
    log.write_text('{"step": 1, "loss/model": NaN}\n{"step": 2, "loss/model": 2.0}\n')
    assert not measure.read_losses(log).finite
    assert not measure.read_losses(tmp_path / "absent.jsonl").finite


def test_probe_attributes_calls_to_steps_and_restores_the_classes(monkeypatch):
    loader = InfiniteLoader([{"image": torch.zeros(1)} for _ in range(4)], 1, 0, "source")

    def fake_step(trainer):
        next(loader)
        TemporalEnsemble.update(None, None, None, None)
        return {}

    def fake_update(self, indices, probs, geometry):
        time.sleep(0.02)
        return 0

    monkeypatch.setattr(Trainer, "train_step", fake_step)
    monkeypatch.setattr(TemporalEnsemble, "update", fake_update)
    original_next = InfiniteLoader.__dict__["__next__"]
    with StepProbe() as probe:
        assert Trainer.__dict__["train_step"] is not fake_step  # wrapped
        Trainer.train_step(None)
        Trainer.train_step(None)
        TemporalEnsemble.update(None, None, None, None)  # outside a step: not counted
        next(loader)
    assert len(probe.steps) == 2
    for s in probe.steps:
        assert s.ensemble_calls == 1 and 0.02 <= s.ensemble_write < s.seconds
        assert 0 < s.data < s.seconds and s.ensemble_read == 0
    assert probe.loaders == [loader]
    assert Trainer.__dict__["train_step"] is fake_step
    assert TemporalEnsemble.__dict__["update"] is fake_update
    assert InfiniteLoader.__dict__["__next__"] is original_next
    with pytest.raises(RuntimeError), StepProbe():
        raise RuntimeError("a failing run")
    assert Trainer.__dict__["train_step"] is fake_step
    probe.close_loaders()
    assert probe.loaders == [] and loader._it is None


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_cpu_peak_memory_is_reset_per_method():
    cpu = torch.device("cpu")
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, touched
    del block
    before = probes.peak_memory(cpu)
    if not probes.reset_peak_memory(cpu):
        pytest.skip("this kernel refuses to reset the peak RSS")
    assert probes.peak_memory(cpu) < before - 150 * 2**20
    assert probes.memory_kind(cpu, True) == "cpu_peak_rss"


# -- options, the failure path and the report schema -----------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--iters", "1"], "--iters 1"),
    (["--methods", "sourceonly"], "did you mean 'source-only'"),
    (["--benchmark", "minicity-gta2cs"], "--benchmark minicity-gta2cs"),
    (["--amp", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    (["--backbone", "resnet1O1"], "--backbone resnet1O1: unknown backbone (did you mean 'resnet101'?)"),
    (["--set", "methods.clst.tau=-1"], "methods.clst.tau"),
])
def test_bad_options_fail_in_one_line_before_anything_is_written(args, message, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    r = CliRunner().invoke(main, ["selftest", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) <= 2
    assert list(temp.iterdir()) == [] and list(tmp_path.iterdir()) == [temp]


def test_keep_refuses_a_folder_that_is_not_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    r = CliRunner().invoke(main, ["selftest", "--keep", str(tmp_path / "out")])
    assert r.exit_code == 2 and "not an empty folder" in r.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def _setup(tmp_path, **kw):
    opts = SelftestOptions(**{"benchmarks": ("gta2cs",), "methods": ("source-only",),
                              "device": "cpu", "iters": 2, "backbone": "resnet-tiny", **kw})
    setup = plan_selftest(opts, tmp_path)
    setup.console = Console(file=io.StringIO())
    return setup


def test_one_line_causes():
    from udabench.errors import DataError
    from udabench.selftest.plan import one_line

    assert one_line(DataError("GTA5 not found at /x; get it from ...")) == \
        "GTA5 not found at /x; get it from ..."
    assert one_line(RuntimeError("backend='inductor' raised:\nRuntimeError: a node was used before"
                                 "\ngraph():\n  ...")) == \
        "RuntimeError: backend='inductor' raised: RuntimeError: a node was used before"
    assert one_line(KeyError()) == "KeyError"


def test_plan_keeps_the_real_protocol_and_says_how_the_network_starts(tmp_path, monkeypatch):
    from udabench.commands.run import plans_from_options
    from udabench.registry import BENCHMARKS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UDABENCH_DATA", str(tmp_path / "my-real-datasets"))
    setup = _setup(tmp_path, sets=("methods.clst.w_cl=0.5",), methods=("all",))
    plans = {job.method: job.plan for job in setup.jobs}
    assert set(plans) >= {"source-only", "clst", "oracle"}
    assert [job.method for job in setup.jobs][0] == "source-only"  # CBST's warm start runs first
    protocol = BENCHMARKS.get("gta2cs")
    from udabench.errors import UserError

    for job in setup.jobs:
        if job.plan is None:  # `udabench run` refuses it the same way
            with pytest.raises(UserError) as refused:
                plans_from_options(job.method, "gta2cs", 0, None, {}, (), None, None, None, (), None)
            assert job.error.endswith(str(refused.value).splitlines()[0])
            continue
        real = plans_from_options(job.method, "gta2cs", 0, None, {}, (), None, None, None, (), None)[0]
        assert job.planned_iters == real.train.iters and job.planned_val_images == 500
        assert job.plan.train.iters == 2 and job.plan.train.batch_size == real.train.batch_size
        assert job.plan.model.backbone == "resnet-tiny"
        assert job.plan.model.init == str(tmp_path / "weights" / "resnet-tiny-random-seed0.pth")
        # the protocol, but for the number of validation images the small tree has
        assert job.plan.bench() == protocol.with_overrides({"val_images": 4})
        assert job.plan.data_root == str(tmp_path / "data")  # not UDABENCH_DATA's
    assert plans["clst"].method_config["w_cl"] == 0.5
    assert plans["clst"].method_config["warmup_iters"] == -1  # the recipe's own, not changed
    assert "randomly initialised" in setup.init_note
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["resnet-tiny-random-seed0.pth"]
    (tmp_path / "r101.pth").write_bytes(b"")  # the plan only checks that the file exists
    weights = _setup(tmp_path, sets=(f"model.init={tmp_path / 'r101.pth'}",))
    assert weights.jobs[0].plan.model.init == str(tmp_path / "r101.pth")
    assert "configured" in weights.init_note


def test_random_weights_are_seeded_and_load_as_model_init(tmp_path):
    from udabench.models import SegmenterConfig, build_segmenter
    from udabench.selftest.plan import random_weights

    path = random_weights("resnet-tiny", tmp_path)
    before = torch.random.get_rng_state()
    assert random_weights("resnet-tiny", tmp_path) == path  # made once
    saved = torch.load(path, weights_only=True)
    again = torch.load(random_weights("resnet-tiny", tmp_path / "again"), weights_only=True)
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    seg = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init=str(path)))
    assert all(torch.equal(v, saved[k]) for k, v in seg.backbone.body.state_dict().items())


def test_a_method_that_run_refuses_fails_alone(tmp_path, monkeypatch):
    from udabench.errors import ConfigError
    from udabench.registry import METHODS

    def refuse(cfg, model):
        raise ConfigError("methods.clst.tau = 0.1 is not allowed: refused for this test")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(METHODS.get("clst"), "check_plan", classmethod(lambda cls, c, m: refuse(c, m)))
    setup = _setup(tmp_path, methods=("source-only,clst",))
    jobs = {job.method: job for job in setup.jobs}
    assert jobs["clst"].plan is None and "refused for this test" in jobs["clst"].error
    assert jobs["source-only"].plan is not None and jobs["source-only"].error is None
    row = run_job(jobs["clst"], setup, lambda line: None)
    assert row["status"] == "failed" and row["error"] == jobs["clst"].error
    assert row["run_dir"] is None and row["batch_size"] is None and not (tmp_path / "runs").exists()


def test_a_failing_method_gives_a_one_line_cause_and_a_schema_valid_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup = _setup(tmp_path)  # no data tree written: the run fails when it opens its datasets
    lines = []
    row = run_job(setup.jobs[0], setup, lines.append)
    assert row["status"] == "failed" and "GTA5 not found" in row["error"] and "\n" not in row["error"]
    assert row["s_per_iter"] is None and lines == [f"gta2cs source-only: failed ({row['error']})"]
    ok = {**row, "status": "ok", "error": None, "s_per_iter": 1.5, "images_per_step": 1.0,
          "train_images_per_s": 1 / 1.5, "eval_s_per_image": 0.4, "eval_images": 4,
          "eval_input_size": [512, 1024], "projected_hours": 50.0, "data_s_per_step": 0.01,
          "data_fraction": float("nan"), "input_bound": False, "losses": {"model": 2.9},
          "losses_finite": True, "miou": {"19": 1.0}, "spec_hash": "abc",
          "export": {"dir": "x", "images": 4, "seconds_per_image": 0.5, "label_size": [1024, 2048],
                     "rescore_max_iou_difference": 0.0, "rescore_matches": True}}
    data = {"ok": True, "problems": [], "datasets": {}, "odd_gta5_pair": None}
    variant = {"amp": "off", "channels_last": False, "compile": False, "status": "ok",
               "error": None, "s_per_iter": 1.5, "train_images_per_s": 0.6, "run_dir": None,
               "reused": True}
    profile = {"benchmark": "gta2cs", "method": "source-only", "device": "cpu", "status": "ok",
               "error": None, "fp32": variant, "amp": {**variant, "amp": "bf16", "reused": False},
               "speedup": 1.2}
    report = build_report(setup, data, [ok, row], profile, 12.0)
    assert_valid(report)
    assert report["results"][0]["data_fraction"] is None  # NaN -> null
    assert not report["ok"] and report["failures"] == [f"gta2cs source-only: {row['error']}"]
    for path, bad in ((("results", 0, "status"), "maybe"), (("results", 1, "s_per_iter"), "1.5"),
                      (("profile", "fp32", "amp"), "fp32"), (("device", "type"), "tpu")):
        broken = json.loads(json.dumps(report))
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = bad
        assert schema_errors(broken, SCHEMA), path
    for drop in ("s_per_iter", "export"):
        broken = json.loads(json.dumps(report))
        del broken["results"][0][drop]
        assert schema_errors(broken, SCHEMA), drop
    broken = json.loads(json.dumps(report))
    broken["results"][0]["surprise"] = 1
    assert schema_errors(broken, SCHEMA)


def _schema_fields(node, path=""):
    if "oneOf" in node:
        for arm in node["oneOf"]:
            if arm.get("type") != "null":
                yield from _schema_fields(arm, path)
        return
    for key, child in node.get("properties", {}).items():
        name = f"{path}.{key}" if path else key
        yield name
        yield from _schema_fields(child, name)
    items = node.get("items")
    if isinstance(items, dict) and "properties" in items:
        yield from _schema_fields(items, path + "[]")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in extra:
        yield from _schema_fields(extra, path + ".<name>")


def test_docs_list_exactly_the_fields_of_the_schema():
    text = (REPO / "docs" / "selftest.md").read_text()
    documented = set()
    for name in re.findall(r"^\| `([^`]+)` \|", text.split("## JSON output", 1)[1], re.M):
        names = [name.replace("<variant>", v) for v in ("fp32", "amp")] if "<variant>" in name \
            else [name]
        documented.update(names)
    assert documented == set(_schema_fields(SCHEMA))


def test_print_schema_prints_the_schema():
    r = CliRunner().invoke(main, ["selftest", "--print-schema"])
    assert r.exit_code == 0 and json.loads(r.output) == SCHEMA


# -- the whole command at real sizes (slow) ------------------------------------------------------------
SLOW_IMAGES = 2  # per source dataset and Cityscapes train; val gets 1. Sizes stay the real ones.


def _valid_pixels(gt_file: Path) -> int:
    """Pixels the official evaluator scores (labelIds not ignored in evaluation)."""
    from cityscapesscripts.helpers.labels import labels

    scored = np.array([not label.ignoreInEval for label in labels if label.id >= 0] + [False] * 222)
    return int(scored[np.array(Image.open(gt_file))].sum())


def _official_instance_scores(preds: list[Path], gts: list[Path], monkeypatch) -> float:
    """The official evaluator with instance-level scores on: it opens every _instanceIds.png."""
    import contextlib

    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    # Its instance-level pass calls np.in1d, which NumPy 2 removed; np.isin is the same test.
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    args = ev.args
    saved = (args.quiet, args.JSONOutput, args.evalInstLevelScore)
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)
    finally:
        args.quiet, args.JSONOutput, args.evalInstLevelScore = saved
    return float(result["averageScoreInstClasses"])


def _lut_from_cityscapesscripts() -> np.ndarray:
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, 255, np.uint8)
    for label in labels:
        if label.id >= 0 and label.trainId not in (255, -1):
            lut[label.id] = label.trainId
    return lut


@pytest.mark.slow
def test_selftest_runs_every_method_at_real_sizes_on_the_cpu(tmp_path, monkeypatch):
    from oracles import official_class_iou

    from udabench.data.datasets import SegmentationDataset
    from udabench.registry import BENCHMARKS, METHODS

    keep = tmp_path / "selftest"
    cmd = [sys.executable, "-m", "udabench", "selftest", "--benchmark", "all", "--methods", "all",
           "--device", "cpu", "--backbone", "resnet-tiny", "--iters", "2",
           "--images", str(SLOW_IMAGES), "--profile", "--format", "json", "--keep", str(keep)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=3600)
    failures = json.loads(proc.stdout)["failures"] if proc.stdout.startswith("{") else None
    assert proc.returncode == 0, failures or proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert_valid(report)
    assert report["ok"] and report["failures"] == [] and report["data"]["ok"]
    assert "randomly initialised" in report["settings"]["init"]

    expected = {(b, m) for b in ("gta2cs", "synthia2cs") for m in METHODS.names()}
    assert {(r["benchmark"], r["method"]) for r in report["results"]} == expected
    cityscapes = keep / "data" / "cityscapes"
    gts = {p.name[:-len("_gtFine_labelIds.png")]: p
           for p in sorted((cityscapes / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))}
    assert gts and all(Image.open(p).size == (2048, 1024) for p in gts.values())
    for row in report["results"]:
        where = f"{row['benchmark']} {row['method']}"
        assert row["status"] == "ok", where
        run = Path(row["run_dir"])
        # finite losses, from the run's own log: both steps
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [[v for k, v in e.items() if k.startswith("loss/")] for e in logged]
        losses = [step for step in losses if step]
        assert len(losses) == 2 and all(math.isfinite(v) for step in losses for v in step), where
        # the real evaluation sizes: input 512x1024, every pixel of the 1024x2048 labels
        record = json.loads((run / "result.json").read_text())
        assert record["eval"]["input_size"] == [512, 1024] and record["iters"] == 2, where
        protocol = BENCHMARKS.get(row["benchmark"]).with_overrides({"val_images": len(gts)})
        assert record["spec_hash"] == protocol.hash(), where
        per_image = np.load(run / "per_image.npz")
        for image_id, matrix in zip(per_image["ids"], per_image["matrices"], strict=True):
            assert matrix.sum() == _valid_pixels(gts[str(image_id)]), where
        # the exported labelIds, scored by the official evaluator, give result.json's IoUs
        preds = {p.stem: p for p in (run / "predictions" / "cityscapes").rglob("*.png")}
        assert set(preds) == set(gts), where
        assert all(Image.open(p).size == (2048, 1024) for p in preds.values()), where
        stems = sorted(gts)
        official = official_class_iou([preds[s] for s in stems], [gts[s] for s in stems])
        for name, value in record["iou"].items():
            theirs = official[name] * 100
            assert (math.isnan(value) and math.isnan(theirs)) or value == pytest.approx(
                theirs, abs=1e-9), (where, name)
        assert row["export"]["rescore_matches"] and row["export"]["label_size"] == [1024, 2048]
        assert row["s_per_iter"] > 0 and row["peak_memory_bytes"] > 0
        assert row["memory_kind"] == "cpu_peak_rss"
        assert (row["ensemble_io_fraction"] is not None) == (row["method"] == "clst"), where

    # the official evaluator's instance-level pass reads the generated _instanceIds.png files
    run = Path(report["results"][0]["run_dir"])
    stems = sorted(gts)
    inst_average = _official_instance_scores(
        [next((run / "predictions" / "cityscapes").rglob(f"{s}.png")) for s in stems],
        [gts[s] for s in stems], monkeypatch)
    assert math.isfinite(inst_average)

    # the odd-sized GTA5 pair: checked again here, independently of the report
    odd = report["data"]["odd_gta5_pair"]
    assert odd["ok"] and odd["manifest_status"] == "resized_label"
    gta5 = keep / "data" / "gta5"
    image, label = gta5 / "images" / f"{odd['id']}.png", gta5 / "labels" / f"{odd['id']}.png"
    assert Image.open(image).size == (1914, 1052) and Image.open(label).size == (1914, 1055)
    manifest = json.loads((keep / "prepared" / "gta5" / "manifest.json").read_text())
    assert [e["status"] for e in manifest["entries"] if e["id"] == odd["id"]] == ["resized_label"]
    dataset = SegmentationDataset("gta5", gta5, "train", manifest=None)
    loaded = dataset.load(dataset.ids.index(odd["id"]))["label"].numpy()
    raw = np.array(Image.open(label))
    rows = (2 * np.arange(1052) + 1) * 1055 // (2 * 1052)
    assert loaded.shape == (1052, 1914)
    assert (loaded == _lut_from_cityscapesscripts()[raw[rows]]).all()

    # fp32 vs bf16 on the CPU, in the same process
    prof = report["profile"]
    assert prof["status"] == "ok" and prof["device"] == "cpu" and prof["speedup"] > 0
    assert prof["fp32"]["amp"] == "off" and prof["amp"]["amp"] == "bf16"
    assert prof["fp32"]["reused"]  # the main table's source-only run already was fp32
