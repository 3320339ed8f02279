from pathlib import Path

import pytest

from udabench.config import Config, TrainConfig, apply_overrides, load_config, merge_sets, parse_set
from udabench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "udabench.toml"
    p.write_text(text)
    return p


def test_shipped_file_loads_and_matches_defaults(monkeypatch):
    monkeypatch.delenv("UDABENCH_DATA", raising=False)
    cfg = load_config(REPO / "udabench.toml")
    assert isinstance(cfg, Config)
    assert cfg.train == TrainConfig()
    # recorded absolute (relative to the file's folder), with the user's spelling kept for display
    assert cfg.paths.data_root == REPO / "data" and cfg.spelled["data_root"] == "data"


def test_precedence_defaults_file_set(tmp_path):
    p = write(tmp_path, "[train]\niters = 100\nlog_every = 5\n")
    cfg = load_config(p, sets=["train.iters=7"])
    assert cfg.train.iters == 7  # --set beats the file
    assert cfg.train.log_every == 5  # file beats the default
    assert cfg.train.num_workers == TrainConfig().num_workers


def test_env_overrides_data_root(tmp_path, monkeypatch):
    p = write(tmp_path, '[paths]\ndata_root = "/somewhere"\n')
    monkeypatch.setenv("UDABENCH_DATA", str(tmp_path / "d"))
    assert load_config(p).paths.data_root == tmp_path / "d"


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    p = write(tmp_path, "[train]\n\nitres = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) + ":3" in msg and "'itres'" in msg and "did you mean 'iters'" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[trian\].*did you mean 'train'"):
        load_config(write(tmp_path, "[trian]\niters = 3\n"))


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, '[train]\niters = "many"\n')
    with pytest.raises(ConfigError, match=r":2: train.iters: expected an integer, got 'many'"):
        load_config(p)
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(write(tmp_path, "[train]\ncompile = 1\n"))


def test_malformed_toml_names_file_and_line(tmp_path):
    p = write(tmp_path, "[train]\niters = = 3\n")
    with pytest.raises(ConfigError, match=r"malformed TOML.*line 2"):
        load_config(p)


def test_parse_set_values_are_toml_then_string():
    assert parse_set("train.iters=20") == (["train", "iters"], 20)
    assert parse_set("methods.clst.tau=0.1") == (["methods", "clst", "tau"], 0.1)
    assert parse_set("train.amp=bf16") == (["train", "amp"], "bf16")
    assert parse_set("train.eval_scales=[0.5, 1.0]") == (["train", "eval_scales"], [0.5, 1.0])
    for bad in ("iters=3", "train.iters", "=3", "train..x=1"):
        with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
            parse_set(bad)


def test_merge_sets_does_not_mutate_and_rejects_value_as_section():
    data = {"train": {"iters": 1}}
    out = merge_sets(data, ["train.iters=2", "methods.clst.w_cl=0.5"])
    assert data == {"train": {"iters": 1}}
    assert out["methods"]["clst"]["w_cl"] == 0.5
    with pytest.raises(ConfigError, match="is a value, not a section"):
        merge_sets(data, ["train.iters.x=2"])


def test_tuple_and_float_coercion():
    t = apply_overrides(TrainConfig(), {"eval_scales": [0.5, 1], "clip_grad": 1}, "x")
    assert t.eval_scales == (0.5, 1.0) and isinstance(t.clip_grad, float)
    with pytest.raises(ConfigError, match=r"x.eval_scales\[1\]: expected a number"):
        apply_overrides(TrainConfig(), {"eval_scales": [0.5, "a"]}, "x")


def test_method_overrides_are_kept_raw_for_the_method(tmp_path):
    cfg = load_config(write(tmp_path, "[methods.clst]\nw_cl = 0.5\n"))
    assert cfg.method_overrides("clst") == {"w_cl": 0.5}
    assert cfg.method_overrides("adversarial") == {}


def test_relative_paths_resolve_against_the_file_or_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("UDABENCH_DATA", raising=False)
    p = write(tmp_path, '[paths]\ndata_root = "d"\noutput_dir = "o"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(p, sets=["paths.output_dir=x"])
    assert cfg.paths.data_root == tmp_path / "d"  # from the file: next to the file
    assert cfg.paths.output_dir == elsewhere / "x"  # from --set: the current folder
    monkeypatch.setenv("UDABENCH_DATA", "rel")
    cfg = load_config(p)
    assert cfg.paths.data_root == elsewhere / "rel" and cfg.origins["paths.data_root"] == "UDABENCH_DATA"


def test_errors_blame_the_set_item_not_the_file(tmp_path):
    p = write(tmp_path, "[train]\niters = 100\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, sets=["train.iters=-1"])
    assert str(e.value).startswith("--set train.iters=-1: train.iters = -1 is not allowed")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[train]\n\nlog_every = 0\n"), sets=["train.iters=3"])
    assert str(e.value).startswith(f"{p}:3: train.log_every = 0 is not allowed: expected a finite number >= 1")


def test_value_errors_of_later_sections_name_their_origin(tmp_path):
    cfg = load_config(write(tmp_path, "[methods.clst]\nw_cl = 0.5\n\n[model]\ninit = 'scratch'\n"),
                      sets=["methods.clst.tau=0.5"])
    assert str(cfg.blame(ConfigError("methods.clst.tau = 0.5 is not allowed"))).startswith("--set methods.clst.tau=0.5: ")
    assert str(cfg.blame(ConfigError("model.init: no such file"))).startswith(f"{tmp_path / 'udabench.toml'}:5: ")
    assert str(cfg.blame(ConfigError("train.iters = 0 ..."))) == "train.iters = 0 ..."  # a default: no origin


def test_non_utf8_file_is_one_line(tmp_path):
    p = tmp_path / "udabench.toml"
    p.write_bytes(b"[train]\n# caf\xe9\niters = 3\n")
    with pytest.raises(ConfigError, match=r"udabench.toml:2: not UTF-8 text \(byte 0xe9\)"):
        load_config(p)


def test_a_run_config_json_is_pointed_at_from():
    with pytest.raises(ConfigError, match="udabench run --from"):
        load_config(REPO / "tests" / "fixtures" / "run_records.json")


def test_tables_of_methods_the_run_does_not_use_are_checked_too(tmp_path):
    with pytest.raises(ConfigError, match=r"udabench.toml:2: methods.clst.tau = -1.0 is not allowed"):
        load_config(write(tmp_path, "[methods.clst]\ntau = -1\n"))
    with pytest.raises(ConfigError, match=r"--set benchmarks.gta2cs.flip_p=2: benchmarks.gta2cs.flip_p = 2.0"):
        load_config(sets=["benchmarks.gta2cs.flip_p=2"])


def test_config_show_names_where_each_value_comes_from(tmp_path, monkeypatch):
    import json as _json

    from click.testing import CliRunner

    from udabench.cli import main

    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[methods.adversarial]\nadv_weight = 0.002\n")
    r = CliRunner().invoke(main, ["config", "show", "adversarial", "-b", "gta2cs", "--format", "json",
                                  "--set", "train.log_every=5"])
    assert r.exit_code == 0, r.output
    rows = {row["key"]: (row["value"], row["from"]) for row in _json.loads(r.output)}
    assert rows["train.iters"] == (150000, "adversarial's published schedule on gta2cs")
    assert rows["train.batch_size"] == (1, "benchmark gta2cs")
    assert rows["model.aspp_branches"] == (2, "adversarial's recipe")
    assert rows["methods.adversarial.adv_weight"] == (0.002, f"{tmp_path / 'udabench.toml'}:2")
    assert rows["train.log_every"] == (5, "--set train.log_every=5")
    assert rows["train.num_workers"] == (2, "default")
    r = CliRunner().invoke(main, ["methods", "source-only", "-b", "minicity-gta2cs"])
    assert r.exit_code == 0 and "lr=0.01" in r.output and "train.iters=300" in r.output


def test_an_error_of_one_method_is_never_blamed_on_another_methods_set():
    from udabench.config import blame

    origins = {"methods": "--set methods.clst.w_cl=0.5", "methods.clst": "--set methods.clst.w_cl=0.5",
               "methods.clst.w_cl": "--set methods.clst.w_cl=0.5"}
    assert str(blame(ConfigError("methods.daformer.fd = true is not allowed"), origins)) == \
        "methods.daformer.fd = true is not allowed"
    assert str(blame(ConfigError("methods.clst.tau = 0 is not allowed"), origins)).startswith("--set methods.clst")
