"""A replay depends on the transcript and the dataset only: the library it compares with is the one recorded.

The duplicate check compares a draft with the built-ins and the promoted metrics. A transcript pins
the promoted versions it was compared with (name, version, sha256); a replay uses exactly those,
wherever the user's library is and whatever it holds, and refuses with one line when one is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from agent.authoring.job import AuthorJob, run_author_job
from agent.authoring.loop import AuthoringSettings
from agent.data.demo import generate_demo_dataset
from agent.errors import UserError
from agent.llm.backends.scripted import ScriptedModel
from agent.llm.transcript import read_transcript
from agent.metrics.contract import parse_metric_source
from agent.metrics.library import Approval, LibraryRef, promote
from agent.sessions.chat import ChatSession, ChatSetup
from agent.sessions.chat_replay import replay_chat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "transcripts"))
import record_fixtures as fixtures  # noqa: E402

SHIPPED = REPO / "transcripts" / "fixture-success-first-time.jsonl"


def _promote(library: Path, source: str) -> LibraryRef:
    spec = parse_metric_source(source, path="<test>")
    approval = Approval(
        approver="test", approved_at=datetime.now(UTC).isoformat(timespec="seconds"), code_sha256=spec.code_sha256
    )
    return LibraryRef.of(promote(library, source, approval).manifest)


def _replay(transcript: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", str(transcript), "--out", str(out), "--workers", "2", *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_replay_ignores_a_library_in_the_working_directory(tmp_path: Path) -> None:
    # The quick start's situation: the candidate this recording ends with was approved into ./metricsmith-library.
    _promote(Path("metricsmith-library"), fixtures.GOOD)
    assert read_transcript(SHIPPED).meta.settings.get("library", []) == []

    result = _replay(SHIPPED, tmp_path / "run")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "same outcome as recorded: passed after 1 exchanges" in result.stdout
    assert "duplicates library metric" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("pinned") / "demo", n_images=24, seed=0)


@pytest.fixture(scope="module")
def pinned_recording(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, LibraryRef]:
    """A session whose draft duplicates a promoted metric: recorded with that library, so it gave up."""
    root = tmp_path_factory.mktemp("pinned-run")
    library = root / "library"
    # The same measurement under another name: a duplicate by rank, which only the library reveals.
    pinned = _promote(library, fixtures.GOOD.replace('NAME = "edge_density"', 'NAME = "inner_edge_share"'))
    outcome = run_author_job(
        AuthorJob(
            idea=fixtures.IDEA,
            annotations=demo,
            run_dir=root / "run",
            backend=ScriptedModel([fixtures.fenced(fixtures.GOOD)]),
            description=fixtures.DESCRIPTION,
            settings=AuthoringSettings(max_repairs=0, max_drafts=1),
            library=library,
            workers=2,
        )
    )
    assert outcome.verdict == "gave_up" and "duplicates library metric inner_edge_share" in outcome.reason
    return root / "run" / "transcript.jsonl", library, pinned


def test_the_transcript_pins_the_library_versions_it_was_compared_with(
    pinned_recording: tuple[Path, Path, LibraryRef],
) -> None:
    transcript, _, pinned = pinned_recording
    recorded = read_transcript(transcript).meta.settings["library"]
    assert [LibraryRef.model_validate(pin) for pin in recorded] == [pinned]
    assert pinned.version == 1 and len(pinned.code_sha256) == 64


def test_a_replay_with_the_pinned_library_compares_with_it_again(
    pinned_recording: tuple[Path, Path, LibraryRef], tmp_path: Path
) -> None:
    transcript, library, _ = pinned_recording
    result = _replay(transcript, tmp_path / "run", "--library", str(library))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "same outcome as recorded: gave_up" in result.stdout


def test_a_replay_without_the_pinned_version_is_refused_in_one_line(
    pinned_recording: tuple[Path, Path, LibraryRef], tmp_path: Path
) -> None:
    transcript, _, _ = pinned_recording
    result = _replay(transcript, tmp_path / "run")  # the test's own library is empty
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "the recording was made with lib:inner_edge_share@1" in last and "pass --library" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists(), "refused before anything was written"


def test_a_replay_refuses_a_pinned_version_whose_code_changed(
    pinned_recording: tuple[Path, Path, LibraryRef], tmp_path: Path
) -> None:
    transcript, library, pinned = pinned_recording
    tampered = tmp_path / "library"
    shutil.copytree(library, tampered)
    metric = tampered / pinned.name / "v1" / "metric.py"
    metric.write_text(metric.read_text() + "\n# edited after approval\n")
    result = _replay(transcript, tmp_path / "run", "--library", str(tampered))
    assert result.returncode == 2
    assert "lib:inner_edge_share@1" in result.stderr and "changed after it was approved" in result.stderr
    assert "Traceback" not in result.stderr


IDEAS_REPLY = "1. edge_density (object) [property] - share of Canny edge pixels inside the box; an empty box has few.\n"


def test_a_chat_session_pins_its_starting_library_and_its_replay_copies_it(demo: Path, tmp_path: Path) -> None:
    library = tmp_path / "library"
    _promote(library, fixtures.GOOD.replace('NAME = "edge_density"', 'NAME = "inner_edge_share"'))
    screen = Console(file=StringIO(), width=200)
    setup = ChatSetup(
        annotations=demo,
        run_dir=tmp_path / "run",
        backend=ScriptedModel([IDEAS_REPLY, fixtures.fenced(fixtures.GOOD)]),
        settings=AuthoringSettings(max_repairs=0, max_drafts=1),
        library=library,
        workers=2,
    )
    with ChatSession(setup, screen) as chat:
        chat.dispatch("/ideas 1")
        chat.dispatch("/implement 1")
    recorded = read_transcript(tmp_path / "run" / "transcript.jsonl")
    (pin,) = (LibraryRef.model_validate(value) for value in recorded.meta.settings["library"])
    assert pin.ref == "lib:inner_edge_share@1"
    outcomes = [event.data for event in recorded.events if event.event == "outcome"]
    assert outcomes and outcomes[0]["verdict"] == "gave_up", "the library took part in the duplicate check"

    # The replay copies the pinned version into its own library and reaches the same outcome.
    assert replay_chat(recorded, screen, out=tmp_path / "replayed", library=library)
    assert (tmp_path / "replayed" / "library" / "inner_edge_share" / "v1" / "metric.py").is_file()
    with pytest.raises(UserError, match="the recording was made with lib:inner_edge_share@1"):
        replay_chat(recorded, screen, out=tmp_path / "replayed-without", library=tmp_path / "empty")
