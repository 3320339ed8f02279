"""A catalogue of user mistakes the CLI can meet. Each one must give ONE actionable error line
(naming the path/key/value at fault), a non-zero exit, no traceback, and leave every existing file
as it was (apart from files the command is allowed to write, e.g. a run's lock or a new run)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.faultkit import env, generate_data, invoke, one_thread, snapshot, write_toml
from udabench.engine.checkpoint import load_checkpoint, save_checkpoint
from udabench.engine.rundir import RunDir
from udabench.engine.trainer import Trainer

RUN = ["run", "source-only", "-b", "minicity-gta2cs"]


@dataclass
class World:
    """A tmp tree every case may read and damage (each case gets a fresh one)."""

    root: Path  # the working directory (udabench.toml is here)
    data: Path  # the shared MiniCity data root (read only)
    gta5: Path  # private copies of tiny dataset trees
    synthia: Path
    cityscapes: Path
    run: Path  # a run interrupted at iteration 2 (config.json, checkpoints/last.pt)


@dataclass
class Case:
    make: Callable[[World], list[str]]  # builds the mistake, returns the CLI arguments
    expect: tuple[str, ...]  # words the error line must contain (besides the exit and the shape)
    writes: tuple[str, ...] = ()  # files (relative to the world root, glob) the command may write
    subprocess: bool = False  # run as a real process to prove the real exit code
    exit_code: int = 2


def _toml(w: World, text: str) -> list[str]:
    (w.root / "udabench.toml").write_text(text)
    return RUN


def _append(w: World, text: str) -> list[str]:
    with open(w.root / "udabench.toml", "a") as f:
        f.write(text)
    return RUN


def _edit_config(w: World, fn: Callable[[dict], None]) -> list[str]:
    cfg = json.loads((w.run / "config.json").read_text())
    fn(cfg)
    (w.run / "config.json").write_text(json.dumps(cfg))
    return ["run", "--resume", str(w.run)]


def _defaults(method: str) -> dict:
    from dataclasses import asdict

    from udabench.registry import METHODS

    return asdict(METHODS.get(method).Config())


def _wrong_arch(w: World) -> list[str]:
    state = load_checkpoint(w.run / "checkpoints" / "last.pt")
    state["method"] = {k: (torch.zeros(3, 3) if v.ndim == 4 else v) for k, v in state["method"].items()
                       if torch.is_tensor(v)}
    save_checkpoint(w.run / "checkpoints" / "last.pt", state)
    return ["eval", str(w.run)]


def _verify_with(damage: Callable[[World], Path], kind: str) -> Callable[[World], list[str]]:
    def make(w: World) -> list[str]:
        return ["data", "verify", kind, "--root", str(damage(w)), "--workers", "1"]
    return make


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.rglob(pattern))[0]


def _corrupt_png(w: World) -> Path:
    p = _first(w.gta5 / "images", "*.png")
    p.write_bytes(p.read_bytes()[:60])
    return w.gta5


def _synthia_8bit(w: World) -> Path:
    from torchvision.io import encode_png

    p = _first(w.synthia / "GT" / "LABELS", "*.png")
    p.write_bytes(encode_png(torch.zeros(1, 32, 64, dtype=torch.uint8)).numpy().tobytes())
    return w.synthia


def _score_dir(w: World, mutate: Callable[[Path], None] | None = None) -> list[str]:
    """Predictions = the ground truth labelIds (valid as they are), then damaged by ``mutate``."""
    data = w.root / "score-data"
    data.mkdir()
    (data / "cityscapes").symlink_to(w.cityscapes)
    preds = w.root / "preds"
    preds.mkdir()
    for gt in (w.cityscapes / "gtFine" / "val").rglob("*_gtFine_labelIds.png"):
        shutil.copy(gt, preds / gt.name.replace("_gtFine_labelIds", "_pred"))
    if mutate:
        mutate(preds)
    return ["score", str(preds), "-b", "gta2cs", "--root", str(data), "--workers", "1"]


def _small_pred(preds: Path) -> None:
    from torchvision.io import encode_png

    p = sorted(preds.iterdir())[0]
    p.write_bytes(encode_png(torch.full((1, 8, 8), 7, dtype=torch.uint8)).numpy().tobytes())


def _store(w: World) -> None:
    records = json.loads((Path(__file__).parent / "fixtures" / "run_records.json").read_text())
    for i, rec in enumerate(records[:4]):
        d = w.root / "runs" / rec["benchmark"] / rec["method"] / f"r{i}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(rec))
        (d / "config.json").write_text(json.dumps({"train": {"iters": rec["iters"]}}))  # a run dir holds both
    invoke("runs", "--reindex", "--output-dir", str(w.root / "runs"))


CASES: dict[str, Case] = {
    # -- names and options ---------------------------------------------------------------------
    "unknown method": Case(lambda w: ["run", "source_only", "-b", "minicity-gta2cs"],
                           ("unknown method 'source_only'", "source-only"), subprocess=True),
    "unknown benchmark": Case(lambda w: ["run", "source-only", "-b", "minicity-gta5cs"],
                              ("unknown benchmark 'minicity-gta5cs'",)),
    "no benchmark given": Case(lambda w: ["run", "source-only"], ("--benchmark",)),
    "--set without '='": Case(lambda w: RUN + ["--set", "train.iters"], ("train.iters", "KEY=VALUE")),
    "--set without a section": Case(lambda w: RUN + ["--set", "iters=3"], ("iters=3", "SECTION.KEY")),
    "--set unknown key": Case(lambda w: RUN + ["--set", "train.iter=3"], ("iter", "iters")),
    "--set unknown section": Case(lambda w: RUN + ["--set", "trian.iters=3"], ("trian", "train")),
    "--set wrong type": Case(lambda w: RUN + ["--set", "train.iters=many"], ("train.iters", "integer")),
    "--set unknown method key": Case(lambda w: RUN + ["--set", "methods.source-only.lrr=0.1"],
                                     ("lrr", "lr")),
    "--set method value out of range": Case(
        lambda w: ["run", "clst", "-b", "minicity-gta2cs", "--set", "methods.clst.tau=-1"],
        ("methods.clst.tau", "-1")),
    "--set a value as a section": Case(lambda w: RUN + ["--set", "train.iters.x=1"], ("iters",)),
    "--seeds malformed": Case(lambda w: RUN + ["--seeds", "0-x"], ("--seeds", "0-x")),
    "--seed and --seeds": Case(lambda w: RUN + ["--seed", "1", "--seeds", "0-2"], ("--seed", "--seeds")),
    "--config missing": Case(lambda w: RUN + ["--config", str(w.root / "nope.toml")], ("nope.toml",)),
    "unknown method pattern": Case(lambda w: ["methods", "zzz*"], ("zzz*",)),
    # -- udabench.toml ----------------------------------------------------------------------------
    "malformed toml": Case(lambda w: _append(w, "\n[train\niters = 3\n"),
                           ("udabench.toml", "malformed TOML")),
    "toml unknown section": Case(lambda w: _append(w, "\n[trainn]\niters = 3\n"), ("trainn", "train")),
    "toml unknown key": Case(lambda w: _toml(w, "[train]\nbatchsize = 2\n"),
                             ("udabench.toml:2", "batchsize", "batch_size")),
    "toml mistyped value": Case(lambda w: _toml(w, "[train]\nbatch_size = \"two\"\n"),
                                ("udabench.toml", "batch_size", "integer")),
    "benchmark override unknown key": Case(
        lambda w: RUN + ["--set", "benchmarks.minicity-gta2cs.crop=[1, 2]"], ("crop", "crop_size"),
        subprocess=True),
    "toml table of a misspelt benchmark": Case(
        lambda w: _append(w, "\n[benchmarks.minicity-gta2cz]\niters = 3\n"),
        ("[benchmarks.minicity-gta2cz]", "minicity-gta2cs")),
    "--set for a misspelt method": Case(lambda w: RUN + ["--set", "methods.sourceonly.lr=0.1"],
                                        ("[methods.sourceonly]", "source-only")),
    "batch not divisible by accumulation": Case(
        lambda w: RUN + ["--set", "train.grad_accum=3"], ("batch_size=2", "grad_accum")),
    # -- data on disk -------------------------------------------------------------------------------
    "dataset folder missing": Case(lambda w: RUN[:2] + ["-b", "gta2cs", "--set",
                                   f"paths.data_root={json.dumps(str(w.root / 'nodata'))}"],
                                   ("nodata",)),
    "dataset folder misnamed": Case(
        _verify_with(lambda w: (w.gta5 / "images").rename(w.gta5 / "Images") and w.gta5, "gta5"),
        ("gta5",)),
    "dataset folder empty": Case(_verify_with(lambda w: (w.root / "empty").mkdir() or w.root / "empty",
                                              "cityscapes"), ("empty",)),
    "verify a tree of another dataset": Case(_verify_with(lambda w: w.cityscapes, "gta5"),
                                             (str(Path("cityscapes")),)),
    "corrupt PNG": Case(_verify_with(_corrupt_png, "gta5"), ("failed verification",), subprocess=True),
    "8-bit SYNTHIA labels": Case(_verify_with(_synthia_8bit, "synthia"), ("failed verification",)),
    # -- runs and checkpoints -----------------------------------------------------------------------
    "resume a folder that is no run": Case(lambda w: ["run", "--resume", str(w.root)], ("config.json",)),
    "resume with other options": Case(lambda w: ["run", "--resume", str(w.run), "--iters", "3"],
                                      ("--resume",)),
    "resume a run of another configuration": Case(
        lambda w: _edit_config(w, lambda c: c["method_config"].update(lr=0.5)),
        ("another configuration", "last.pt"), writes=("run/run.lock",)),
    "resume a run of another method": Case(
        lambda w: _edit_config(w, lambda c: c.update(method="minent", method_config=_defaults("minent"))),
        ("another configuration", "config_hash"), writes=("run/run.lock",)),
    "resume a run whose config.json lost a key": Case(lambda w: _edit_config(w, lambda c: c.pop("seed")),
                                                      ("config.json", "seed")),
    "eval a checkpoint of another architecture": Case(_wrong_arch, ("does not fit",)),
    "eval a path that is no run": Case(lambda w: ["eval", str(w.root / "udabench.toml")],
                                       ("udabench.toml",)),
    "NaN loss (lr 1e30)": Case(lambda w: RUN + ["--set", "methods.source-only.lr=1e30", "--iters", "4"],
                               ("became", "lower learning rate"),
                               writes=("runs/**",)),
    "non-finite setting (lr nan)": Case(lambda w: RUN + ["--set", "methods.source-only.lr=nan"],
                                        ("methods.source-only.lr", "finite")),
    # -- score, compare -----------------------------------------------------------------------------
    "score: prediction of another size": Case(lambda w: _score_dir(w, _small_pred), ("8",)),
    "score: wrong encoding": Case(lambda w: _score_dir(w) + ["--encoding", "trainid"], ("trainid",)),
    "score: predictions missing": Case(
        lambda w: _score_dir(w, lambda p: sorted(p.iterdir())[0].unlink()), ("no prediction",)),
    "score: unknown benchmark": Case(lambda w: _score_dir(w)[:2] + ["-b", "gta2city"], ("gta2city",)),
    "score: existing --per-image file": Case(
        lambda w: _score_dir(w) + ["--per-image", str(w.root / "udabench.toml")], ("already exists",)),
    "compare unknown names": Case(lambda w: _store(w) or ["compare", "source-onlyy", "clst",
                                                          "--output-dir", str(w.root / "runs")],
                                  ("source-onlyy",), writes=("runs/store.sqlite*",)),
    "compare without any runs": Case(lambda w: ["compare", "a", "b", "--output-dir", str(w.root / "none")],
                                     ("no finished runs", "none")),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_gta5, tiny_synthia, tiny_cityscapes):
    """Built once: the data, and a run interrupted at iteration 2."""
    data = tmp_path_factory.getbasetemp() / "faults-data"
    generate_data(data)
    root = tmp_path_factory.mktemp("bad-input-base")
    write_toml(root, data, iters=6, checkpoint_every=2)
    original = Trainer.train_step

    def stop_at_2(self):
        logs = original(self)
        self._stop_requested = self.step == 2
        return logs

    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(root)
        mp.setattr(Trainer, "train_step", stop_at_2)
        with one_thread():
            assert invoke(*RUN).exit_code == 130
    finally:
        mp.undo()
    [run] = [p.parent for p in root.glob("runs/**/config.json")]
    shutil.move(run, root / "run")
    shutil.rmtree(root / "runs")
    for name, tree in (("gta5", tiny_gta5), ("synthia", tiny_synthia), ("cityscapes", tiny_cityscapes)):
        shutil.copytree(tree, root / name)
    return root, data


def _allowed(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(Path(rel).match(p) or rel.startswith(p.rstrip("*")) for p in patterns)


# real processes cost an interpreter start (~8 s here): those cases run with the slow tests
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if c.subprocess else n
                                  for n, c in CASES.items()])
def test_a_user_mistake_gives_one_line_and_touches_nothing(name, base, tmp_path, monkeypatch):
    case = CASES[name]
    src, data = base
    root = tmp_path / "w"
    shutil.copytree(src, root, symlinks=True)
    w = World(root, data, root / "gta5", root / "synthia", root / "cityscapes", root / "run")
    write_toml(root, data, iters=6, checkpoint_every=2)  # runs go below this world, not the base
    monkeypatch.chdir(root)
    monkeypatch.delenv("UDABENCH_DATA", raising=False)
    args = case.make(w)
    writes = case.writes  # a new run that fails before training must not leave its directory
    before = snapshot(root)
    if case.subprocess:
        r = subprocess.run([sys.executable, "-m", "udabench", *args], cwd=root, env=env(),
                           capture_output=True, text=True, timeout=300)
        code, out, err = r.returncode, r.stdout + r.stderr, r.stderr
    else:
        with one_thread():
            r = invoke(*args)
        code, out, err = r.exit_code, r.output, r.stderr
        assert r.exception is None or isinstance(r.exception, SystemExit), out
    assert "Traceback" not in out, out
    assert code == case.exit_code, out
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].lower().startswith("error:"), err
    for word in case.expect:
        assert word in lines[0], (word, lines[0])
    after = snapshot(root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert all(_allowed(k, writes) for k in changed), sorted(changed)
    for config in root.glob("runs/**/config.json"):  # what a failed new run keeps, it trained
        assert RunDir(config.parent).started(), sorted(p.name for p in config.parent.iterdir())


def test_the_catalogue_is_large():
    assert len(CASES) >= 25
