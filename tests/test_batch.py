"""The batch job through the real CLI and the real openai SDK, against a scripted model server on loopback.

The model is the one thing faked (the issue's named boundary): a small OpenAI-compatible HTTP server
that answers a brainstorm request with a numbered list and every other request with a working metric.
Everything else is real: the config, the loop, the sandbox, the run directory, SIGKILL and resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from process_helpers import start_as_from_a_terminal

from agent.data.demo import generate_demo_dataset
from agent.sessions.batch import BatchResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transcripts"))
import record_fixtures as fixtures

IDEAS = ["boxes with almost no edges", "boxes that are not on a panda", "very dark images", "tiny boxes"]
BRAINSTORM_REPLY = (
    "1. edge_poor_boxes (object) [property] - boxes with few edges inside are empty or misplaced\n"
    "2. dull_boxes (object) - boxes of flat colour rarely hold an animal\n"
)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last = body["messages"][-1]["content"] if "messages" in body else body.get("prompt", "")
        if "Propose" in last:
            text = BRAINSTORM_REPLY
        elif "Which label errors should it catch?" in last:
            text = "property"  # the model's proposal for an idea given without a target
        else:
            text = fixtures.fenced(fixtures.GOOD)
        reply = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("batch") / "demo", n_images=12, seed=0, width=320, height=240)


def write_config(folder: Path, demo: Path, base_url: str, ideas: list[str] | None = None) -> Path:
    lines = [f"ideas = {json.dumps(ideas)}" if ideas else "brainstorm = 2", 'library = "library"', ""]
    lines += ["[dataset]", f'annotations = "{demo}"', f'errors = "{demo.parent / "errors.json"}"', ""]
    lines += ["[model]", 'backend = "openai"', 'model = "scripted-gpt"', f'base_url = "{base_url}"']
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def batch(*args: str, background: bool = False) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [sys.executable, "-m", "agent.cli", "batch", *args, "--workers", "1"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    if background:
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def results(run_dir: Path) -> list[BatchResult]:
    path = run_dir / "results.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        with contextlib.suppress(ValueError):  # a line torn by the kill
            parsed.append(BatchResult.model_validate_json(line))
    return parsed


def test_a_batch_run_authors_every_idea_and_says_how_to_review(demo: Path, model_server: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, demo, model_server, IDEAS[:2])
    run_dir = tmp_path / "run"
    result = batch(str(config), "--out", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["ideas"], summary["finished"], summary["passed"]) == (2, 2, 2)
    # Per idea: the model's proposal of what it should catch, then the draft.
    assert summary["tokens"] == 2 * 2 * 150 and len(summary["pending_review"]) == 2
    assert f"metricsmith review {run_dir}" in result.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [idea["text"] for idea in manifest["ideas"]] == IDEAS[:2]
    assert json.loads((run_dir / "summary.json").read_text())["finished"] == 2
    assert (run_dir / "report.html").stat().st_size > 1000
    for idea in manifest["ideas"]:
        assert (run_dir / "ideas" / idea["id"] / "transcript.jsonl").exists()
    # A pending candidate of a batch run is approved through the run directory itself, unless two ideas wrote
    # the same code (the scripted model writes one code for both): then through its idea's folder.
    candidate = summary["pending_review"][0]
    approve = [sys.executable, "-m", "agent.cli", "approve"]
    library = ["--library", str(tmp_path / "lib")]
    twins = subprocess.run([*approve, str(run_dir), candidate, *library], capture_output=True, text=True, timeout=120)
    assert twins.returncode == 2 and f"{candidate} is a candidate of 2 ideas" in twins.stderr
    first_idea = run_dir / "ideas" / manifest["ideas"][0]["id"]
    approved = subprocess.run([*approve, str(first_idea), candidate, *library], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert approved.returncode == 0, approved.stderr


def test_brainstorm_then_approve_passing_is_recorded_as_a_policy(demo: Path, model_server: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, demo, model_server)
    run_dir = tmp_path / "run"
    result = batch(str(config), "--out", str(run_dir), "--approve-passing", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ideas"] == 2 and len(summary["approved"]) == 2 and summary["pending_review"] == []
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["brainstormed"] and manifest["ideas"][0]["text"].startswith("edge poor boxes:")
    # A brainstormed idea keeps the target the model gave it; one without gets the model's proposal.
    assert [idea["targets"] for idea in manifest["ideas"]] == [["property"], []]
    decisions = [
        json.loads(line)
        for idea in manifest["ideas"]
        for line in (run_dir / "ideas" / idea["id"] / "decisions.jsonl").read_text().splitlines()
    ]
    assert {d["action"] for d in decisions} == {"approve", "promote"}
    assert all(d["by"] == "batch policy" for d in decisions)
    assert all(d["policy"].startswith("--approve-passing") for d in decisions if d["action"] == "approve")
    assert (tmp_path / "library").is_dir()


def test_killed_at_random_points_then_resumed_loses_and_repeats_nothing(
    demo: Path, model_server: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, demo, model_server, IDEAS)
    run_dir = tmp_path / "run"
    chooser = random.Random(7)
    started = False
    for attempt in range(3):
        args = [str(config), "--resume", str(run_dir)] if started else [str(config), "--out", str(run_dir)]
        process = batch(*args, "--concurrency", "2", background=True)
        time.sleep(chooser.uniform(0.8, 4.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        started = started or (run_dir / "manifest.json").exists()
        done = [result.idea_id for result in results(run_dir)]
        assert len(done) == len(set(done)), f"attempt {attempt}: an idea finished twice: {done}"
    final = batch(str(config), "--resume", str(run_dir), "--concurrency", "2", "--json")
    assert final.returncode == 0, final.stderr
    finished = results(run_dir)
    ids = [result.idea_id for result in finished]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert sorted(ids) == sorted(idea["id"] for idea in manifest["ideas"]), "every idea exactly once"
    assert all(result.verdict == "passed" for result in finished)
    assert json.loads(final.stdout)["finished"] == len(IDEAS)


def test_config_problems_exit_2_with_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('ideas = ["x"]\n[model]\nbackend = "gpt"\n')
    result = batch(str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: 2 problems: dataset: Field required; model.backend:")


def test_a_missing_dataset_is_one_line_before_any_model_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('ideas = ["x"]\n[dataset]\nannotations = "nope.json"\n[model]\nbackend = "local"\n')
    result = batch(str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"error: COCO annotations file not found: {tmp_path / 'nope.json'}"
    assert not (tmp_path / "run").exists()


def test_a_result_line_torn_by_a_kill_does_not_take_the_next_result_with_it(tmp_path: Path) -> None:
    # The next result was appended to the torn line, and the two were lost together on the next resume.
    from agent.sessions.batch import BatchResult, _read_results, _ResultLog

    def result(number: int) -> BatchResult:
        return BatchResult(idea_id=f"0{number}-idea", idea=f"idea {number}", verdict="passed", reason="ok",
                           finished_at="2026-12-07T00:00:00Z")  # fmt: skip

    path = tmp_path / "results.jsonl"
    whole = result(1).model_dump_json() + "\n"
    path.write_text(whole + result(2).model_dump_json()[:50])  # as a SIGKILL mid-write leaves it
    assert list(_read_results(tmp_path)) == ["01-idea"], "a torn line is an idea not finished"
    _ResultLog(path).append(result(3))
    assert list(_read_results(tmp_path)) == ["01-idea", "03-idea"]
    assert path.read_text().startswith(whole)


def test_ctrl_c_while_model_requests_hang_exits_at_once_and_starts_no_queued_idea(demo: Path, tmp_path: Path) -> None:
    # It waited for the hanging requests' whole timeout, and meanwhile started the queued ideas.
    import signal
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections and never answers
    config = write_config(tmp_path, demo, f"http://127.0.0.1:{listener.getsockname()[1]}/v1", IDEAS[:3])
    config.write_text(config.read_text() + "request_timeout = 100\n")
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "agent.cli", "batch", str(config), "--out", str(run_dir), "--concurrency", "2"]
    process = start_as_from_a_terminal(command)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list((run_dir / "ideas").glob("*/transcript.jsonl"))) < 2:
            time.sleep(0.1)
        time.sleep(1.0)  # both requests sent and waiting
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        listener.close()
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 10, "it waited on the hanging requests"
    assert "interrupted: the finished ideas are kept" in stderr and "Traceback" not in stderr
    started_ideas = sorted(path.name for path in (run_dir / "ideas").iterdir())
    assert started_ideas == ["01-boxes-with-almost-no-edges", "02-boxes-that-are-not-on-a-panda"]


def test_a_start_that_failed_while_brainstorming_is_started_again_not_stuck(
    demo: Path, model_server: str, tmp_path: Path
) -> None:
    # It left only brainstorm.jsonl: --out said "not empty", --resume "not a batch run directory".
    from agent.errors import UserError
    from agent.sessions.batch import load_manifest

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "brainstorm.jsonl").write_text('{"kind": "meta"}\n')
    with pytest.raises(UserError, match="stopped while brainstorming, before any idea was set"):
        load_manifest(run_dir)
    config = write_config(tmp_path / "config", demo, model_server)  # brainstorm = 2
    result = batch(str(config), "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert (run_dir / "manifest.json").exists() and (run_dir / "brainstorm.failed-1.jsonl").exists()
    both = batch(str(config), "--out", str(run_dir), "--resume", str(run_dir))
    assert both.returncode == 2 and "give --resume RUN_DIR (to finish a run) or --out RUN_DIR" in both.stderr


def test_a_dead_server_stops_the_queue_and_resume_authors_those_ideas_once_it_answers(
    demo: Path, model_server: str, tmp_path: Path
) -> None:
    # Every idea spent the whole retry budget on a dead server (some ten minutes each by default), and --resume
    # counted those ideas as done: the run could never be finished.
    import socket

    with socket.socket() as probe:  # a port nothing listens on: every request is refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    config = write_config(tmp_path, demo, dead, IDEAS)
    run_dir = tmp_path / "run"
    first = batch(str(config), "--out", str(run_dir), "--concurrency", "1")
    assert isinstance(first, subprocess.CompletedProcess)
    assert first.returncode == 3, first.stderr
    verdicts = [result.verdict for result in results(run_dir)]
    # The idea under way when the second failed finishes; the last one never starts.
    assert verdicts in (["unreachable"] * 2, ["unreachable"] * 3), first.stderr
    assert "unreachable for 2 ideas in a row: no new ideas" in first.stderr
    assert f"--resume {run_dir} authors them again" in first.stderr
    assert "A capable model does better" not in first.stderr  # an outage says nothing of the model
    again = batch(str(config), "--resume", str(run_dir), "--base-url", model_server)
    assert isinstance(again, subprocess.CompletedProcess)
    assert again.returncode == 0, again.stderr
    assert "4 ideas: 0 done earlier, 4 to author" in again.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["passed"], summary["unreachable"], summary["finished"]) == (4, 0, 4)


def test_a_resume_while_the_run_still_runs_is_refused_in_one_line(
    demo: Path, model_server: str, tmp_path: Path
) -> None:
    # Both processes set aside each other's ideas and failed with "... is not empty: give --out a new folder".
    import fcntl

    config = write_config(tmp_path, demo, model_server, IDEAS[:1])
    run_dir = tmp_path / "run"
    first = batch(str(config), "--out", str(run_dir))
    assert isinstance(first, subprocess.CompletedProcess) and first.returncode == 0, first.stderr
    before = (run_dir / "results.jsonl").read_text()
    with open(run_dir / "manifest.json", "rb") as running:  # as the running batch holds it
        fcntl.flock(running, fcntl.LOCK_EX)
        again = batch(str(config), "--resume", str(run_dir))
    assert isinstance(again, subprocess.CompletedProcess)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir} is being run by another metricsmith batch right now; let it finish (or stop it), "
        f"then --resume {run_dir} if ideas are left"
    )
    assert (run_dir / "results.jsonl").read_text() == before
