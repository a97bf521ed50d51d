"""The package layout holds: the layers import only downwards, and the CLI loads a command's dependencies
only when that command runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
# Libraries that only authoring, chat, the report's renderer or the local model need.
HEAVY = ("openai", "jinja2", "prompt_toolkit", "llama_cpp")

# Parses `argv` with the real CLI, then, instead of running the command, prints what is imported.
PROBE = """
import json, sys
import agent.cli.main as cli
cli.run_command = lambda args: print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy}))) or 0
sys.exit(cli.main({argv}))
"""


def _imported_after_parsing(argv: list[str]) -> list[str]:
    script = PROBE.format(heavy=set(HEAVY), argv=argv)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "--annotations", "a.json", "--out", "s.csv"],
        ["eval", "--annotations", "a.json", "--errors", "e.json", "--scores", "s.csv"],
        ["report", "--annotations", "a.json", "--scores", "s.csv", "--out", "r.html"],
        ["doctor"],
        ["library", "list"],
    ],
    ids=lambda argv: argv[0],
)
def test_commands_that_talk_to_no_model_import_no_model_library(argv: list[str]) -> None:
    assert _imported_after_parsing(argv) == []


def test_the_probe_sees_a_heavy_import_when_there_is_one() -> None:
    # `chat` needs prompt_toolkit at parse time already: proof that the probe above can fail.
    assert "prompt_toolkit" in _imported_after_parsing(["chat", "--annotations", "a.json"])


def test_help_loads_no_command_module() -> None:
    script = (
        "import sys, agent.cli.main as cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('agent.cli.')"
        " and m not in {'agent.cli.main', 'agent.cli.console', 'agent.cli.entry'}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert all(name in result.stdout for name in COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_summary_is_the_first_line_of_its_commands_docstring(name: str) -> None:
    subcommands = next(action for action in build_parser(name)._actions if action.dest == "command")
    handler = subcommands.choices[name].get_default("handler")
    assert handler is not None, f"{COMMANDS[name].module} does not register {name}"
    assert handler.__doc__.strip().splitlines()[0] == COMMANDS[name].summary


LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # this environment's, whatever PATH says


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(root)},
    )


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="needs import-linter: pip install -e '.[test]'")
def test_an_import_against_the_layers_breaks_the_contracts(tmp_path: Path) -> None:
    for part in ("agent", "sandbox"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    kept = _lint_imports(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr

    # The data layer reaching up into the command line: the kind of import the layers forbid.
    coco = tmp_path / "agent" / "data" / "coco.py"
    coco.write_text(coco.read_text() + "\nimport agent.cli.console  # noqa: E402\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "agent's layers import only downwards BROKEN" in broken.stdout
    assert "agent.data.coco -> agent.cli.console" in broken.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "--timeout", "inf"], "argument --timeout: must be a finite number, got inf"),
        (["score", "--timeout", "1e300"], "argument --timeout: must be at most 86400 seconds (a day), got 1e300"),
        (["score", "--memory", "1"], "argument --memory: must be between 64 and 1048576 MB, got 1"),
        (["score", "--memory", "99999999999999"], "argument --memory: must be between 64 and 1048576 MB"),
        (["score", "--workers", "100000"], "argument --workers: must be at most "),
        (["selftest", "--seeds", "100000000"], "argument --seeds: must be at most 100"),
        (["triage", "--seeds", "1000"], "argument --seeds: must be at most 100"),
        (["inject", "--seed", "-5"], "argument --seed: must be 0 or more, got -5"),
        (["demo-data", "d", "--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
        (["author", "--max-repairs", "-1"], "argument --max-repairs: must be 0 or more, got -1"),
        (["author", "--temperature", "nan"], "argument --temperature: must be a number from 0 to 2, got nan"),
        (["author", "--temperature", "3"], "argument --temperature: must be a number from 0 to 2, got 3"),
        (["author", "--request-timeout", "inf"], "argument --request-timeout: must be a finite number, got inf"),
        (["batch", "c.toml", "--request-timeout", "1e300"], "argument --request-timeout: must be at most 86400"),
    ],
)
def test_a_number_no_run_can_use_is_refused_while_parsing(argv: list[str], message: str) -> None:
    # These went on to a worker's traceback, an internal error or a run that never ends.
    from agent.errors import UserError

    with pytest.raises(UserError, match=re.escape(message)):
        build_parser(argv[0]).parse_args(argv)


def test_a_full_disk_is_one_line_saying_what_was_being_written(tmp_path: Path) -> None:
    # /dev/full fails every write with ENOSPC, as a full disk does; the error from a write names no file.
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "library", "list", "--library", str(tmp_path / "lib")],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: No space left on device (while writing)"


def test_a_full_disk_under_a_command_with_an_output_names_it() -> None:
    import argparse
    import errno

    from agent.cli.main import _while_writing

    full = OSError(errno.ENOSPC, "No space left on device")
    assert _while_writing(full, argparse.Namespace(out="scores.csv")) == (
        " (while writing scores.csv; free space on its disk, or choose another --out)"
    )
    assert _while_writing(OSError(errno.ENOSPC, "No space left on device", "x.csv"), None) == ""  # it names its file
    assert _while_writing(OSError(errno.EACCES, "Permission denied"), argparse.Namespace(out="x")) == ""


def test_ctrl_c_while_the_command_line_is_still_importing_says_interrupted() -> None:
    # A Ctrl-C in a command's first tenth of a second lands while its own modules are being imported, before
    # `main` can handle anything: it printed a KeyboardInterrupt traceback. Here the import of the command
    # line raises it, as a Ctrl-C there does.
    script = (
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'agent.cli.main':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "from agent.cli.entry import run\n"
        "sys.exit(run())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "score"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "interrupted\n")


def test_the_console_script_and_python_m_start_where_ctrl_c_is_handled() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"metricsmith": "agent.cli.entry:run"}
    assert "from agent.cli.entry import run" in (REPO / "agent" / "cli" / "__main__.py").read_text()
