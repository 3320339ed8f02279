"""The example plug-in (examples/udabench-example-plugin), installed as a user installs a package,
in a fresh venv, and used through udabench's entry points only: its method, dataset, backbone,
head and benchmarks are listed, keep their contracts, and train and evaluate through `udabench run`
(docs/extending.md describes each part; this file is the CI run of those worked examples).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.venvkit import clean_env, make_venv

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "examples" / "udabench-example-plugin"
METHOD = "example-flip-consistency"
TINY_SIZES = """source_train_size = [64, 32]
target_train_size = [64, 32]
eval_input_size = [64, 32]
eval_label_size = [96, 48]
"""
CONDITIONS = ("fog", "night", "rain", "snow")


def call(py: Path, *args: str, cwd: Path, ok: bool = True, timeout: int = 600
         ) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(py), *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def install(py: Path, project: Path) -> None:
    """``pip install`` of a project folder into the venv of ``py``, built from a copy (the build
    leaves build/ and *.egg-info folders where it runs)."""
    copy = py.parent.parent.parent / f"build-{project.name}"  # next to the venv
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    call(py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--ignore-installed", str(copy), cwd=copy)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv with udabench (from the running environment) and the example plug-in installed."""
    base = tmp_path_factory.mktemp("plugin")
    py = make_venv(base / "venv")
    install(py, PLUGIN)
    return py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny GTA5 tree and a tiny ACDC tree (made from a generated MiniCity's Cityscapes-format
    target: each city a sequence, the images spread over the four conditions)."""
    from udabench.minicity import ensure_minicity
    from udabench.minicity.params import MiniCityParams

    root = tmp_path_factory.mktemp("plugin-data")
    params = MiniCityParams(height=48, width=96, n_source=4, n_target_train=4, n_target_val=4)
    paths = ensure_minicity(root / "generated", params, sources=("gta5",))
    shutil.copytree(paths.gta5, root / "gta5")
    for split in ("train", "val"):
        images = sorted((paths.cityscapes / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))
        for n, image in enumerate(images):
            seq, frame = image.parent.name, image.name[:-len("_leftImg8bit.png")]
            cond = CONDITIONS[n % len(CONDITIONS)]
            label = paths.cityscapes / "gtFine" / split / seq / f"{frame}_gtFine_labelIds.png"
            for src, dst in ((image, root / "acdc" / "rgb_anon" / cond / split / seq / f"{frame}_rgb_anon.png"),
                             (label, root / "acdc" / "gt" / cond / split / seq / f"{frame}_gt_labelIds.png")):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)
    return root


def one_result(runs: Path) -> dict:
    found = list(runs.glob("*/*/*/result.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def test_the_venv_helper_sees_packages_of_a_venv_it_is_run_from(venv, tmp_path):
    """Issue 13 item 11: from inside a venv, ``venv --system-site-packages`` alone gives the BASE
    interpreter's packages. The plug-in is installed only in ``venv``; a venv made from there by
    tests/venvkit.py must import it (and torch), a plain one must not."""
    code = ("import subprocess, sys; from pathlib import Path; from tests.venvkit import make_venv; "
            f"py = make_venv(Path({str(tmp_path / 'inner')!r})); "
            f"subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', "
            f"{str(tmp_path / 'plain')!r}], check=True); print(py)")
    inner = Path(call(venv, "-c", code, cwd=REPO).stdout.strip().splitlines()[-1])
    check = "import torch, udabench, udabench_example; print(udabench_example.__file__)"
    assert str(venv.parent.parent) in call(inner, "-c", check, cwd=tmp_path).stdout
    plain = call(tmp_path / "plain" / "bin" / "python", "-c", "import udabench_example",
                 cwd=tmp_path, ok=False)
    assert plain.returncode != 0 and "udabench_example" in plain.stderr


def test_every_part_is_registered_through_its_entry_point_and_keeps_its_contract(venv, tmp_path):
    code = """
from udabench.data import dataset_names
from udabench.models import SegmenterConfig, build_backbone, check_backbone, check_head
from udabench.registry import BENCHMARKS, HEADS, METHODS, MODELS
assert 'example-flip-consistency' in METHODS.names()
assert {'example-minicity-strong', 'example-gta2acdc'} <= set(BENCHMARKS.names())
assert 'example-plain-cnn' in MODELS.names() and 'example-fpn-lite' in HEADS.names()
assert 'example-acdc' in dataset_names()
cfg = SegmenterConfig(backbone='example-plain-cnn', init='scratch', head='example-fpn-lite')
backbone = build_backbone(cfg)
assert check_backbone(backbone) == [], check_backbone(backbone)
problems, reduction = check_head(HEADS.get('example-fpn-lite')(backbone.levels, 19, cfg), backbone.levels, 19)
assert problems == [] and reduction == 2, (problems, reduction)
print('ok')
"""
    assert call(venv, "-c", code, cwd=tmp_path).stdout.strip() == "ok"
    listing = call(venv, "-m", "udabench", "methods", cwd=tmp_path).stdout
    row = next(line for line in listing.splitlines() if METHOD in line)
    assert "flip consistency on the target" in row and "weight=1.0" in row


def test_the_method_contract_test_covers_the_plugin_method(venv):
    """tests/test_method_contract.py parametrises over the registry: installed, the plug-in's
    method gets every check with no edit of the test."""
    out = call(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_method_contract.py",
               "-k", METHOD, cwd=REPO).stdout
    # every check that is not slow: the contract itself and the declared-units check
    assert re.search(r"\b2 passed\b", out) and "failed" not in out and "error" not in out, out[-2000:]


def test_method_backbone_and_head_train_on_the_plugin_minicity_benchmark(venv, tmp_path):
    (tmp_path / "udabench.toml").write_text(f"""
[paths]
data_root = "{tmp_path / 'data'}"
output_dir = "{tmp_path / 'runs'}"

[train]
batch_size = 2
num_workers = 0
log_every = 1

[benchmarks.example-minicity-strong]
{TINY_SIZES}minicity = {{ height = 48, width = 96, n_source = 4, n_target_train = 4, n_target_val = 2 }}
""")
    call(venv, "-m", "udabench", "run", METHOD, "--benchmark", "example-minicity-strong",
         "--iters", "2", "--set", "model.backbone=example-plain-cnn",
         "--set", "model.head=example-fpn-lite", "--set", "model.init=scratch", cwd=tmp_path)
    record = one_result(tmp_path / "runs")
    assert (record["method"], record["benchmark"], record["iters"]) == (METHOD, "example-minicity-strong", 2)
    assert record["model"]["backbone"] == "example-plain-cnn"
    assert record["model"]["head"]["name"] == "example-fpn-lite"
    assert record["uda"] and math.isfinite(record["miou"]["19"]) and record["eval"]["images"] == 2
    losses = [json.loads(line) for line in
              (Path(record["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in losses] == [1, 2]
    assert all(math.isfinite(line["flip_consistency"]) and line["flip_consistency"] > 0 for line in losses)
    # its own generated data (other style strengths: another MiniCity key than the built-in's)
    assert len(list((tmp_path / "data" / "minicity").iterdir())) == 1


def test_the_plugin_dataset_is_verified_and_trained_towards(venv, data, tmp_path):
    out = call(venv, "-m", "udabench", "data", "verify", "example-acdc", "--root",
               str(data / "acdc"), cwd=tmp_path).stdout
    assert "ACDC" in out
    (tmp_path / "udabench.toml").write_text(f"""
[paths]
data_root = "{data}"
output_dir = "{tmp_path / 'runs'}"

[train]
batch_size = 2
num_workers = 0
log_every = 1

[benchmarks.example-gta2acdc]
{TINY_SIZES}""")
    call(venv, "-m", "udabench", "run", METHOD, "--benchmark", "example-gta2acdc", "--iters", "2",
         "--set", "model.backbone=resnet-tiny", "--set", "model.init=scratch", cwd=tmp_path)
    record = one_result(tmp_path / "runs")
    assert (record["benchmark"], record["iters"]) == ("example-gta2acdc", 2)
    frames = sorted(p.name[:-len("_gt_labelIds.png")] for p in (data / "acdc" / "gt").rglob("*.png")
                    if p.parent.parent.name == "val")
    assert record["eval"]["images"] == len(frames) == 4
    scored = np.load(Path(record["run_dir"]) / "per_image.npz")
    assert sorted(str(i) for i in scored["ids"]) == frames
