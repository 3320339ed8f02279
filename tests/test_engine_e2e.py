"""End to end through the CLI on a tiny generated MiniCity: run, result record, resume, eval."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from udabench.cli import main
from udabench.engine.checkpoint import load_checkpoint
from tests.faultkit import run_dir_in
from udabench.engine.rundir import RunDir
from udabench.engine.trainer import Trainer
from tests.helpers import tiny_toml



@pytest.fixture()
def workdir(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("e2e")
    data = tmp_path_factory.getbasetemp() / "e2e-data"  # shared: generated once per session
    (base / "udabench.toml").write_text(tiny_toml(data, base / "runs"))
    monkeypatch.chdir(base)
    monkeypatch.delenv("UDABENCH_DATA", raising=False)
    return base


def run_cli(*args):
    return CliRunner().invoke(main, list(args))


def only_run_dir(base, method="source-only"):
    dirs = list((base / "runs" / "minicity-gta2cs" / method).iterdir())
    assert len(dirs) == 1
    return dirs[0]


@pytest.mark.slow
def test_run_writes_a_complete_run_directory(workdir):
    r = run_cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--seed", "3")
    assert r.exit_code == 0, r.output
    run = only_run_dir(workdir)
    rec = json.loads((run / "result.json").read_text())
    assert rec["method"] == "source-only" and rec["seed"] == 3 and rec["iters"] == 6
    assert rec["subsets"] == ["19"] and rec["convention"] == "A" and rec["uda"] is True
    assert rec["eval"]["network"] == "student" and rec["eval"]["checkpoint"] == "last"
    assert rec["eval"]["input_size"] == [32, 64] and rec["eval"]["images"] == 3
    assert rec["eval"]["label_size"] == [48, 96]  # logits upsampled to the labels' own size
    assert set(rec["iou"]) >= {"road", "bicycle"} and 0 <= rec["miou"]["19"] <= 100
    assert rec["compute"]["images_per_second"] > 0 and rec["compute"]["gpu_hours"] == 0
    per_image = np.load(run / "per_image.npz")
    assert per_image["matrices"].shape == (3, 19, 19)
    # the per-image matrices add up to the scored matrix: recompute the mIoU from them
    from udabench.metrics import score_matrix

    assert score_matrix(per_image["matrices"].sum(0)).miou["19"] * 100 == pytest.approx(rec["miou"]["19"])
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [2, 4, 6] and all("loss/model" in l for l in lines)
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["world_size"] == 1
    assert "mIoU19" in r.output and "convention A" in r.output


@pytest.mark.slow
def test_interrupt_then_resume_equals_straight_run(workdir, monkeypatch):
    assert run_cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--out", "straight").exit_code == 0
    # --out names the output folder: the run goes to OUT/<benchmark>/<method>/<run-id>
    straight = run_dir_in(workdir / "straight")
    assert straight.parent == workdir / "straight" / "minicity-gta2cs" / "source-only"
    assert (workdir / "straight" / "store.sqlite").is_file()  # indexed into OUT's own store

    original = Trainer.train_step

    def stop_at_3(self):
        logs = original(self)
        if self.step == 3:
            self._stop_requested = True  # what Ctrl-C does
        return logs

    monkeypatch.setattr(Trainer, "train_step", stop_at_3)
    r = run_cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--out", "cut")
    assert r.exit_code == 130 and "interrupted at iteration 3" in r.output and "--resume" in r.output
    monkeypatch.setattr(Trainer, "train_step", original)
    cut = run_dir_in(workdir / "cut")
    assert load_checkpoint(RunDir(cut).checkpoint)["step"] == 3
    r = run_cli("run", "--resume", str(cut))
    assert r.exit_code == 0, r.output
    a = load_checkpoint(RunDir(straight).checkpoint)["method"]
    b = load_checkpoint(RunDir(cut).checkpoint)["method"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((straight / "result.json").read_text())
    rb = json.loads((cut / "result.json").read_text())
    assert ra["iou"] == rb["iou"] and ra["miou"] == rb["miou"]
    steps = [json.loads(l)["step"] for l in (cut / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    # a finished run cannot be resumed again, and nothing is overwritten
    before = (cut / "result.json").read_bytes()
    r = run_cli("run", "--resume", str(cut))
    assert r.exit_code == 2 and "already finished" in r.output
    assert (cut / "result.json").read_bytes() == before

    # eval re-scores the last checkpoint to the same numbers, without touching result.json
    r = run_cli("eval", str(cut))
    assert r.exit_code == 0, r.output
    evals = list((cut / "evals").iterdir())
    assert json.loads(evals[0].read_text())["miou"] == rb["miou"]


@pytest.mark.slow
def test_second_process_on_the_same_run_dir_is_refused(workdir, monkeypatch):
    original = Trainer.train_step

    def stop_at_1(self):
        logs = original(self)
        self._stop_requested = True
        return logs

    monkeypatch.setattr(Trainer, "train_step", stop_at_1)
    run_cli("run", "source-only", "--benchmark", "minicity-gta2cs")
    monkeypatch.setattr(Trainer, "train_step", original)
    run = only_run_dir(workdir)
    held = RunDir(run).lock()
    try:
        r = run_cli("run", "--resume", str(run))
        assert r.exit_code == 2 and "in use by another udabench process" in r.output
    finally:
        held.close()


@pytest.mark.slow
def test_oracle_is_recorded_as_not_uda(workdir):
    r = run_cli("run", "oracle", "--benchmark", "minicity-gta2cs", "--iters", "2")
    assert r.exit_code == 0, r.output
    rec = json.loads((only_run_dir(workdir, "oracle") / "result.json").read_text())
    assert rec["uda"] is False and "NOT UDA" in r.output


@pytest.mark.slow
def test_self_training_starts_from_a_finished_source_only_run(workdir):
    """CBST's protocol: start from the source-only run of the same benchmark, seed, network and
    training settings; made first (an ordinary indexed run) when there is none, reused after."""
    r = run_cli("run", "self-training", "--benchmark", "minicity-gta2cs", "--name", "cbst", "--tag", "t1")
    assert r.exit_code == 0, r.output
    assert "none found: making it first" in r.output
    src = only_run_dir(workdir, "source-only")
    st = only_run_dir(workdir, "self-training")
    rec = json.loads((st / "result.json").read_text())
    init = rec["init_from"]
    assert init["run_id"] == src.name and init["run_dir"] == str(src.resolve())
    import hashlib

    assert init["sha256"] == hashlib.sha256((src / "checkpoints" / "last.pt").read_bytes()).hexdigest()
    assert rec["name"] == "cbst" and rec["tags"] == ["t1"] and rec["planned_iters"] == rec["iters"] == 6
    assert rec["eval"]["val_fingerprint"].startswith("3-")
    assert json.loads((src / "result.json").read_text())["method"] == "source-only"  # a normal run
    # a second self-training run (another name) reuses the finished source-only run
    r = run_cli("run", "self-training", "--benchmark", "minicity-gta2cs", "--name", "again")
    assert r.exit_code == 0, r.output
    assert "starts from the finished source-only run" in r.output
    assert len(list((workdir / "runs" / "minicity-gta2cs" / "source-only").iterdir())) == 1
    # the made run is an ordinary source-only run: `udabench run source-only` is the same config
    # (self-training's own BatchNorm mode is its training choice, not part of "the network")
    plain = json.loads((src / "config.json").read_text())
    assert plain["model"]["bn_mode"] == "frozen_affine"
    r = run_cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--seed", "1")
    assert r.exit_code == 0
    r = run_cli("run", "self-training", "--benchmark", "minicity-gta2cs", "--seed", "1")
    assert r.exit_code == 0 and "starts from the finished source-only run" in r.output
    # train.init_from=none: CBST from model.init with a source-only warm-up, no source run needed
    r = run_cli("run", "self-training", "--benchmark", "minicity-gta2cs", "--set", "train.init_from=none")
    assert r.exit_code == 0, r.output
    recs = [json.loads((d / "result.json").read_text())
            for d in (workdir / "runs" / "minicity-gta2cs" / "self-training").iterdir()]
    assert sorted(str(x["init_from"] and x["init_from"]["run_id"]) for x in recs if x["seed"] == 0) == sorted(
        [src.name, src.name, "None"])
    # seeds 0 and 1, each from its own seed's source-only run, are one configuration (one row)
    warm = {x["seed"]: x["config_hash"] for x in recs if x["init_from"] and x["name"] != "cbst"}
    assert warm[0] == warm[1]


@pytest.mark.slow
def test_from_reproduces_a_run_bit_for_bit_and_data_may_move(workdir, monkeypatch):
    assert run_cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--seed", "2",
                   "--set", "methods.source-only.lr=0.02").exit_code == 0
    first = only_run_dir(workdir)
    r = run_cli("run", "--from", str(first))
    assert r.exit_code == 0, r.output
    second = next(d for d in (workdir / "runs" / "minicity-gta2cs" / "source-only").iterdir() if d != first)
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert a["seed"] == b["seed"] == 2 and b["method_config"]["lr"] == 0.02
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (first, second))
    assert ra["config_hash"] == rb["config_hash"] and ra["iou"] == rb["iou"]
    ca, cb = (load_checkpoint(d / "checkpoints" / "last.pt")["method"] for d in (first, second))
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    # --from with a change: a new config
    r = run_cli("run", "--from", str(first), "--set", "methods.source-only.lr=0.03", "--seed", "4")
    assert r.exit_code == 0, r.output
    # paths are recorded absolute: eval works from any folder, and UDABENCH_DATA finds moved data
    assert json.loads((first / "config.json").read_text())["data_root"].startswith("/")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_cli("eval", str(first)).exit_code == 0
    data = json.loads((first / "config.json").read_text())["data_root"]
    moved = workdir / "moved-data"
    import shutil

    shutil.copytree(data, moved)
    monkeypatch.setenv("UDABENCH_DATA", str(moved))
    r = run_cli("eval", str(first))
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_an_incomplete_validation_set_stops_the_run_before_training(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (tmp_path / "udabench.toml").write_text(tiny_toml(data, tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    assert run_cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--iters", "1").exit_code == 0
    val = sorted(data.glob("minicity/*/cityscapes/leftImg8bit/val/*/*.png"))
    assert len(val) == 3
    stem = val[0].name.replace("_leftImg8bit.png", "")
    val[0].unlink()
    for label in data.glob(f"minicity/*/cityscapes/gtFine/val/*/{stem}_gtFine_*.png"):
        label.unlink()
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*"))
    r = run_cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--iters", "1")
    assert r.exit_code == 2 and "scored on 3 validation images but 2 were found" in r.stderr
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*")) == before


def test_a_run_is_re_evaluated_in_the_memory_layout_it_was_evaluated_in(workdir, monkeypatch):
    """On CUDA a run trains and evaluates NHWC (train.channels_last), and bf16 kernels of the two
    layouts round differently: an NCHW re-evaluation re-scored up to 0.015 IoU points away from
    result.json on an H200. Here the CPU takes CUDA's place (the layout is plumbing, not numerics):
    the restored network of `udabench eval` / `predict` is laid out as the run's was, and scores
    what result.json says."""
    from udabench.engine import devices
    from udabench.engine.evaluate_run import evaluate_run, restore

    monkeypatch.setattr(devices, "CHANNELS_LAST_DEVICES", ("cuda", "cpu"))
    r = run_cli("run", "source-only", "--benchmark", "minicity-gta2cs", "--iters", "2")
    assert r.exit_code == 0, r.output
    run = only_run_dir(workdir)
    rec = json.loads((run / "result.json").read_text())
    assert rec["train"]["channels_last"] is True
    _, net = restore(run, "cpu").method.eval_network()
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    again, _ = evaluate_run(run, device="cpu")
    assert again["miou"] == rec["miou"]
    assert json.dumps(again["iou"], sort_keys=True) == json.dumps(rec["iou"], sort_keys=True)  # NaN-aware
