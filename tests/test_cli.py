"""The CLI surface: listing verbs and one-line errors with a non-zero exit, no traceback."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from udabench import __version__
from udabench.cli import main


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_methods_table_lists_builtins_with_defaults():
    r = invoke("methods")
    assert r.exit_code == 0
    assert "source-only" in r.output and "oracle" in r.output and "lr=" in r.output


def test_methods_wildcard_and_no_match():
    assert "oracle" not in invoke("methods", "source*").output
    r = invoke("methods", "zzz*")
    assert r.exit_code == 2 and "no method matches 'zzz*'" in r.output


def test_benchmarks_table():
    r = CliRunner().invoke(main, ["benchmarks"], catch_exceptions=False, terminal_width=250)
    assert r.exit_code == 0
    for name in ("gta2cs", "synthia2cs", "minicity-gta2cs", "minicity-synthia2cs"):
        assert name in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "sourceonly", "--benchmark", "minicity-gta2cs"], "unknown method 'sourceonly'"),
        (["run", "source-only", "--benchmark", "gta2c"], "unknown benchmark 'gta2c'"),
        (["run", "source-only", "--benchmark", "minicity-gta2cs", "--set", "iters=3"], "expected SECTION.KEY=VALUE"),
        (["run", "source-only", "--benchmark", "minicity-gta2cs", "--set", "train.itres=3"], "did you mean 'iters'"),
        (["run", "source-only", "--benchmark", "minicity-gta2cs", "--set", "methods.source-only.lr=fast"], "expected a number"),
        (["run", "source-only", "--benchmark", "minicity-gta2cs", "--seeds", "2-x"], "--seeds"),
        (["run", "source-only"], "usage: udabench run METHOD --benchmark B"),
        (["run", "--resume", "/nonexistent/run"], "is not a udabench run directory"),
        (["eval", "/nonexistent/run"], "neither a run directory"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) <= 2  # one wrapped line at most
    assert list(tmp_path.iterdir()) == []  # nothing written for a rejected command


def test_real_process_prints_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "udabench", "run", "nope", "--benchmark", "gta2cs"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "unknown method 'nope'" in p.stderr


def test_verbs_load_lazily_and_their_listed_help_is_their_own():
    """`udabench --help` lists every verb without importing torch; the help it shows for a verb
    not yet loaded is the verb's own docstring line (so the table in cli.py cannot drift)."""
    code = ("import sys; from click.testing import CliRunner; from udabench.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "False"
    from udabench.cli import _COMMANDS
    ctx = main.make_context("udabench", ["run", "--help"], resilient_parsing=True)
    for name, (_, _, listed) in _COMMANDS.items():
        assert name in out
        assert main.get_command(ctx, name).get_short_help_str(limit=1000) == listed
    assert main.get_command(ctx, "nonsense") is None
