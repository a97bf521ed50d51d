"""The Label Studio export against Label Studio itself: started on loopback with its own SQLite database,
a project made with the exported config, the tasks imported through its REST API and read back.

Label Studio pins Django and many other packages, so it lives in a venv of its own, never in ours:
`.ci/run` creates it and exports METRICSMITH_LABEL_STUDIO (its `label-studio` executable). Without
that variable the test looks at the default place `.ci/run` installs to, and skips, saying so, when
neither has it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.data.coco import load_coco
from agent.data.demo import generate_demo_dataset

DEFAULT_EXECUTABLE = Path.home() / ".cache" / "metricsmith-ci" / "label-studio" / "bin" / "label-studio"
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a throwaway user's, of a server this test owns
STARTUP_SECONDS = 240
# Read on import: the suite's hermetic fixture (tests/conftest.py) removes every METRICSMITH_* variable
# before each test runs.
GIVEN_EXECUTABLE = os.environ.get("METRICSMITH_LABEL_STUDIO")


def _executable() -> Path:
    path = Path(GIVEN_EXECUTABLE) if GIVEN_EXECUTABLE else DEFAULT_EXECUTABLE
    if not path.is_file():
        pytest.skip(
            f"Label Studio is not installed at {path}: set METRICSMITH_LABEL_STUDIO to its label-studio "
            "executable (.ci/run installs it into a venv of its own)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Server:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode(),
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: {error.code} {error.read()[:500]!r}") from error


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Any:
    executable = _executable()
    data = tmp_path_factory.mktemp("label-studio-data")
    port = _free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        # Label Studio 1.2x disables the legacy `Token` header for new organisations unless told otherwise.
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LATEST_VERSION_CHECK": "false",  # no request to pypi.org on start
    }
    command = [str(executable), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data), "--username", "triage@example.com", "--password", "triage-test-only",
               "--user-token", TOKEN]  # fmt: skip
    log = (data / "server.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    server = _Server(f"http://127.0.0.1:{port}")
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"label-studio exited {process.returncode}: {(data / 'server.log').read_text()[-2000:]}"
                )
            try:
                server.call("GET", "/api/projects")
                break
            except (urllib.error.URLError, ConnectionError, AssertionError, OSError):
                if time.monotonic() - started > STARTUP_SECONDS:
                    raise AssertionError(f"label-studio did not answer in {STARTUP_SECONDS} s") from None
                time.sleep(1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.mark.slow
def test_tasks_and_config_import_into_label_studio_with_every_box_label_and_score(
    label_studio: _Server, tmp_path: Path
) -> None:
    annotations = generate_demo_dataset(tmp_path / "demo", n_images=24, seed=5, workers=1)
    out = tmp_path / "triage"
    assert main(["triage", "--annotations", str(annotations), "--out", str(out), "--export", "label-studio",
                 "--workers", "1"]) == 0  # fmt: skip
    tasks = json.loads((out / "label-studio" / "tasks.json").read_text())
    config = (out / "label-studio" / "config.xml").read_text()
    project = label_studio.call("POST", "/api/projects", {"title": "metricsmith triage", "label_config": config})
    imported = label_studio.call("POST", f"/api/projects/{project['id']}/import", tasks)
    assert imported["task_count"] == len(tasks) and imported["prediction_count"] == len(tasks)

    listed = label_studio.call("GET", f"/api/tasks?project={project['id']}&page_size=1000")["tasks"]
    predictions = label_studio.call("GET", f"/api/predictions?project={project['id']}")
    by_task = {prediction["task"]: prediction for prediction in predictions}
    back = {task["data"]["image_id"]: (task, by_task[task["id"]]) for task in listed}
    dataset = load_coco(annotations)
    queue = [json.loads(line) for line in (out / "triage.jsonl").read_text().splitlines()]
    suspicion = {item["annotation_id"]: item["suspicion"] for item in queue if item["level"] == "object"}
    names = {category.id: category.name for category in dataset.categories}
    assert set(back) == {image.id for image in dataset.images}
    for image in dataset.images:
        task, prediction = back[image.id]
        sent = next(t for t in tasks if t["data"]["image_id"] == image.id)
        assert task["data"]["suspicion"] == pytest.approx(sent["data"]["suspicion"])
        assert task["data"]["reasons"] == sent["data"]["reasons"]
        assert prediction["score"] == pytest.approx(sent["predictions"][0]["score"])
        regions = {region["id"]: region for region in prediction["result"]}
        boxes = [a for a in dataset.annotations if a.image_id == image.id]
        assert set(regions) == {f"a{a.id}" for a in boxes}
        for annotation in boxes:
            region = regions[f"a{annotation.id}"]
            x, y, w, h = annotation.bbox
            value = region["value"]
            # Back from percent to pixels, as Label Studio's own COCO export converts them.
            assert value["x"] * image.width / 100 == pytest.approx(x)
            assert value["y"] * image.height / 100 == pytest.approx(y)
            assert value["width"] * image.width / 100 == pytest.approx(w)
            assert value["height"] * image.height / 100 == pytest.approx(h)
            assert value["rectanglelabels"] == [names[annotation.category_id]]
            assert region["original_width"] == image.width and region["original_height"] == image.height
            assert region["score"] == pytest.approx(suspicion[annotation.id])
    # The Data Manager sorts by the prediction score: the most suspicious image is the first task sent.
    top = max(back.values(), key=lambda pair: pair[1]["score"])[0]
    assert top["data"]["rank"] == 1
