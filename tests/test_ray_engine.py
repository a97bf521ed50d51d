"""`metricsmith score --engine ray`: the same rows as the local engine, on a real local Ray cluster.

One Ray instance serves the whole module (starting one costs seconds): `ray.init` with two CPUs, a
small object store and no dashboard, stopped in teardown. The engine finds it connected and uses it.
The CLI tests that need their own Ray (or none) run `metricsmith` as a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the [ray] extra: pip install -e '.[ray]'")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install -e '.[ray]'")

from agent.cli.main import main  # noqa: E402
from agent.data.coco import load_coco  # noqa: E402
from agent.data.demo import generate_demo_dataset  # noqa: E402
from agent.metrics.contract import list_builtin_metrics  # noqa: E402
from agent.metrics.neighbours import nearest_neighbours  # noqa: E402
from agent.metrics.parts import FEATURES_PART, PartWriter, part_name  # noqa: E402
from agent.metrics.results import read_rows, write_rows  # noqa: E402
from agent.metrics.scoring import RowColumns, RowMaker, ScoreOutcome, ScoreRow, score_dataset  # noqa: E402
from sandbox.distributed import RayEngine  # noqa: E402
from sandbox.engine import CallResult, OutputUnwritable, ScoringEngine, WorkerStartFailed  # noqa: E402
from sandbox.isolation import SandboxConfig  # noqa: E402
from sandbox.protocol import Call, ImageTask, MetricCode  # noqa: E402
from tests.hostile_helpers import BENIGN_SOURCE, brightness, hostile_source, make_dataset, wait_until_gone  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def cluster() -> object:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",  # a new instance, whatever `ray start` runs on this machine
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(
        tmp_path_factory.mktemp("ray-demo") / "demo", n_images=12, seed=3, error_rate=0.3, width=320, height=240
    )


def _exact(rows: list[ScoreRow]) -> list[tuple[object, ...]]:
    """Rows with each score as its 8 bytes: equal only when bit-identical (0.0 and -0.0, NaN, all told apart)."""
    exact = []
    for row in rows:
        fields = [value for name, value in row.as_dict().items() if name != "score"]
        exact.append((*fields, None if row.score is None else struct.pack("<d", row.score)))
    return exact


class _Watched(RayEngine):
    """A RayEngine that keeps every result that reached the driver."""

    received: list[CallResult]

    def run(self, metrics, tasks, sink, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.received = []
        return super().run(
            metrics, tasks, lambda results: (self.received.extend(results), sink(results)), *args, **kwargs
        )


def _summaries(outcome: ScoreOutcome) -> list[tuple[object, ...]]:
    """What the CLI prints of each metric; scores as a sorted list, since batches come back in any order."""
    return [
        (s.name, s.level, s.scored, s.not_applicable, dict(s.failures), sorted(s.scores), s.first_failures)
        for s in outcome.summaries
    ]


def test_rows_equal_the_local_engines_for_every_builtin_on_the_demo(demo: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="the parts are Parquet")
    dataset = load_coco(demo)
    specs = list_builtin_metrics()
    assert any(spec.output == "features" for spec in specs), "the demo run must include feature metrics"
    config = SandboxConfig(workers=2)
    local = score_dataset(dataset, specs, config)
    engines: list[_Watched] = []

    def ray_engine(config: SandboxConfig) -> RayEngine:
        # Rows of the neighbour table in Ray tasks of 8: the demo's few boxes still take the distributed path.
        engines.append(_Watched(config, batch_images=4, neighbour_rows_per_task=8))
        return engines[-1]

    remote = score_dataset(dataset, specs, config, engine=ray_engine)
    assert engines[0].timings.batches >= 3, "the images must have gone through Ray in several batches"
    assert _exact(remote.rows) == _exact(local.rows)
    assert len(remote.rows) == remote.expected_rows
    # The neighbour step and the learned metrics scored boxes, not only the plain metrics.
    feature_names = {spec.name for spec in specs if spec.output == "features"}
    assert {row.metric for row in remote.rows if row.score is not None} >= feature_names
    # The layers are reported as the local engine reports them: every one, active or not.
    assert remote.layers == local.layers and remote.layers

    # The same job with the actors writing parts (`--out DIR/`): the directory read back as one table is the
    # local engine's single file, rows, schema and metadata; the summary is the gathered one.
    write_rows(tmp_path / "local.parquet", local.rows)
    writer = PartWriter.create(tmp_path / "parts", specs, dataset)
    parted = score_dataset(dataset, specs, config, engine=ray_engine, writer=writer)
    writer.finish()
    assert parted.rows == [] and parted.row_count == len(local.rows)
    assert _exact(read_rows(tmp_path / "parts")) == _exact(local.rows)
    single, parts = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "parts")
    assert parts.schema.equals(single.schema, check_metadata=True)
    assert _summaries(parted) == _summaries(local) and parted.layers == local.layers
    # The driver received the feature metrics' results only, never an ordinary metric's.
    assert {result.metric for result in engines[-1].received} <= writer.maker.held
    # One part per batch with ordinary rows (a batch of training tasks only has none), named by its key.
    written = {path.name for path in (tmp_path / "parts").iterdir()}
    assert FEATURES_PART in written and len(written) > 2
    assert written - {FEATURES_PART} <= {part_name(k) for k in range(engines[-1].timings.batches)}


@pytest.mark.parametrize("values", ["continuous", "tied"])
def test_the_neighbour_table_from_ray_tasks_equals_the_one_computed_here(values: str) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3000, 6))
    if values == "tied":  # few distinct values: many exact ties, which go to the lower index
        vectors = np.round(vectors)
    engine = RayEngine(SandboxConfig(workers=1), neighbour_rows_per_task=500)
    spread = nearest_neighbours(vectors, 10, engine.map_rows)
    assert np.array_equal(spread, nearest_neighbours(vectors, 10))
    assert spread.shape == (3000, 10)


HOSTILE_SOURCE = """
import ctypes
import os
import signal
import socket


def score(image, scene):
    index = scene["image"]["id"]
    if index == 0:
        return float(len(ctypes.string_at(0)))  # segfault
    if index == 1:
        os._exit(3)
    if index == 2:  # the soft timeout ignored: only the host's hard deadline stops it
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    if index == 3:
        while True:
            pass
    if index == 4:
        raise ValueError("no score for image 4")
    return float(index)
"""


def _hostile_run(tmp_path: Path, share_workers: bool) -> tuple[list[CallResult], list[CallResult]]:
    """The benign metric and a hostile one that crashes, exits, hangs and raises, run locally and on Ray."""
    dataset = tmp_path / "dataset"
    items = make_dataset(dataset, 8)
    metrics = [
        MetricCode(name="brightness", level="image", source=BENIGN_SOURCE, filename="brightness.py"),
        MetricCode(name="hostile", level="image", source=hostile_source(HOSTILE_SOURCE), filename="hostile.py"),
    ]
    tasks = [
        ImageTask(image_id=index, path=path, scene=scene, calls=(Call(0, None), Call(1, None)))
        for index, (path, scene) in enumerate(items)
    ]
    config = SandboxConfig(workers=1, timeout_s=0.5, read_only_paths=(str(dataset),), share_workers=share_workers)
    local: list[CallResult] = []
    ScoringEngine(config).run(metrics, tasks, local.extend)
    remote: list[CallResult] = []
    RayEngine(config, batch_images=3).run(metrics, tasks, remote.extend)
    assert wait_until_gone(str(dataset), timeout_s=15) == [], "sandbox workers outlived the Ray run"
    return local, remote


def _by_call(results: list[CallResult]) -> dict[tuple[int, int, int | None], CallResult]:
    keyed = {(r.metric, r.image_id, r.obj): r for r in results}
    assert len(keyed) == len(results), "a call was reported twice"
    return keyed


@pytest.mark.parametrize("share_workers", [True, False], ids=["shared", "separate"])
def test_hostile_metric_fails_its_items_exactly_as_locally(tmp_path: Path, share_workers: bool) -> None:
    local, remote = _hostile_run(tmp_path, share_workers)
    assert _by_call(remote) == _by_call(local)
    kinds = {r.image_id: r.kind for r in remote if r.metric == 1}
    assert kinds[0] == kinds[1] == "crash" and kinds[2] == "hard_timeout"
    assert kinds[3] == "timeout" and kinds[4] == "exception"
    # The job went on: every benign score is there and right, and so are the hostile metric's other images.
    assert all(r.score == brightness(r.image_id) for r in remote if r.metric == 0)
    assert all(r.score == float(r.image_id) for r in remote if r.metric == 1 and r.image_id > 4)


def test_a_worker_that_cannot_start_on_a_node_fails_the_job_with_its_own_message(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    items = make_dataset(dataset, 2)
    metrics = [MetricCode(name="brightness", level="image", source=BENIGN_SOURCE, filename="brightness.py")]
    tasks = [ImageTask(image_id=i, path=p, scene=scene, calls=(Call(0, None),)) for i, (p, scene) in enumerate(items)]
    # No worker starts in a millisecond: the machine's problem, raised as the local engine raises it.
    config = SandboxConfig(workers=1, startup_timeout_s=0.001, read_only_paths=(str(dataset),))
    with pytest.raises(WorkerStartFailed, match="failed to start"):
        RayEngine(config).run(metrics, tasks, lambda results: None)


def test_an_actor_that_cannot_see_the_out_directory_fails_the_job_with_its_node_named(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    items = make_dataset(dataset, 2)
    metrics = [MetricCode(name="brightness", level="image", source=BENIGN_SOURCE, filename="brightness.py")]
    tasks = [ImageTask(image_id=i, path=p, scene=scene, calls=(Call(0, None),)) for i, (p, scene) in enumerate(items)]
    columns = (RowColumns(name="brightness", level="image", suspicious="low", code_sha256=None, origin="t"),)
    writer = PartWriter.prepared(
        tmp_path / "parts", RowMaker(columns=columns, specs_of=((0,),), held=frozenset()), "{}"
    )
    (tmp_path / "parts" / writer.marker).unlink()  # as a node sees a directory of its own at the same path
    config = SandboxConfig(workers=1, read_only_paths=(str(dataset),))
    with pytest.raises(OutputUnwritable, match=f"on {socket.gethostname()} is not the --out directory"):
        RayEngine(config).run(metrics, tasks, lambda results: None, writer=writer)
    assert list((tmp_path / "parts").iterdir()) == []


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _our_actor_processes() -> list[int]:
    """This test's Ray actors holding a sandboxed worker (Ray names the process after the class)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"_SandboxActor" in cmdline and _descends_from(int(entry), os.getpid()):
            found.append(int(entry))
    return found


SLOW_SOURCE = """
import time

NAME = "slow"
LEVEL = "object"


def score(image, obj, scene):
    time.sleep(0.1)
    return float(image.mean()) + obj["id"]
"""


def test_an_actor_killed_mid_batch_is_restarted_and_every_item_is_scored_once(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    items = make_dataset(dataset, 16, objects=2)
    metrics = [
        MetricCode(name="brightness", level="image", source=BENIGN_SOURCE, filename="brightness.py"),
        MetricCode(name="slow", level="object", source=SLOW_SOURCE, filename="slow.py"),
    ]
    tasks = [
        ImageTask(image_id=index, path=path, scene=scene, calls=(Call(0, None), Call(1, 0), Call(1, 1)))
        for index, (path, scene) in enumerate(items)
    ]
    killed: list[int] = []
    results: list[CallResult] = []
    summaries: list[str] = []

    def sink(batch: list[CallResult]) -> None:
        results.extend(batch)
        if not killed:  # the first batch is back, so the pool is busy with the next ones: kill it mid-batch
            killed.extend(_our_actor_processes())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    # The actors write the rows as parts (`--out DIR/`): a batch Ray runs again must replace its own part.
    columns = [RowColumns(name=m.name, level=m.level, suspicious="low", code_sha256=None, origin="t") for m in metrics]
    maker = RowMaker(columns=tuple(columns), specs_of=((0,), (1,)), held=frozenset())
    writer = PartWriter.prepared(tmp_path / "parts", maker, '{"metrics": {}}')
    engine = RayEngine(SandboxConfig(workers=1, read_only_paths=(str(dataset),)), batch_images=4)
    engine.run(metrics, tasks, sink, writer=writer, on_written=summaries.append)
    writer.finish()
    assert killed, "no actor process was found to kill"
    assert results == [], "the rows stay with the actors"
    assert len(summaries) == 4 and sum(orjson.loads(summary)["rows"] for summary in summaries) == 48
    rows = read_rows(tmp_path / "parts")
    keyed = {(row.metric, row.image_id, row.annotation_id): row for row in rows}
    assert len(keyed) == len(rows), "a row was written twice"
    expected = {("brightness", i, None) for i in range(16)} | {
        ("slow", i, 100 * i + k) for i in range(16) for k in (0, 1)
    }
    assert set(keyed) == expected  # nothing lost
    for (metric, image, annotation), row in keyed.items():
        assert row.error_kind is None, row
        wanted = brightness(image) + (0 if metric == "brightness" else annotation)
        assert row.score == pytest.approx(wanted)
    assert sorted(path.name for path in (tmp_path / "parts").iterdir()) == [part_name(k) for k in range(4)]
    # The killed actors' sandboxed workers died with them, by the death signal, not by Ray's cleanup.
    assert wait_until_gone(str(dataset), timeout_s=15) == []


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", "score", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_an_unreachable_cluster_is_one_line_and_exit_3(demo: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _cli("--annotations", str(demo), "--out", str(tmp_path / "o.csv"), "--engine", "ray",
                  "--address", f"127.0.0.1:{port}")  # fmt: skip
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused; "
                     "start it with `ray start --head` or check --address"], result.stderr  # fmt: skip
    assert not (tmp_path / "o.csv").exists()


def test_cli_starts_its_own_ray_and_writes_the_local_engines_file(demo: Path, tmp_path: Path) -> None:
    metric = ["--metric", "builtin:brightness", "--metric", "builtin:appearance_neighbours"]
    local = _cli("--annotations", str(demo), "--out", str(tmp_path / "local.jsonl"), *metric)
    assert local.returncode == 0, local.stderr
    remote = _cli("--annotations", str(demo), "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray",
                  "--workers-per-node", "1", *metric)  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    sandbox_line = [line for line in local.stderr.splitlines() if line.startswith("sandbox: ")]
    assert sandbox_line and sandbox_line[0] in remote.stderr.splitlines()
    assert "Traceback" not in remote.stderr


@pytest.mark.parametrize("suffix", [".csv", ".parquet", "/"])
def test_every_output_format_holds_the_local_engines_rows(demo: Path, tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("pyarrow", reason="writing .parquet needs pyarrow")
    # In this process, so the Ray engine finds the module's Ray connected and uses it.
    metric = ["--metric", "builtin:object_area_relative", "--metric", "builtin:appearance_neighbours"]
    local, remote = f"{tmp_path}/local{suffix}", f"{tmp_path}/ray{suffix}"  # "/": a directory of parts
    assert main(["score", "--annotations", str(demo), "--out", local, *metric]) == 0
    assert main(["score", "--annotations", str(demo), "--out", remote, "--engine", "ray", *metric]) == 0
    assert _exact(read_rows(Path(remote))) == _exact(read_rows(Path(local)))
    assert len(read_rows(Path(remote))) == 2 * len(load_coco(demo).annotations)


@pytest.fixture()
def head_node() -> Iterator[str]:
    """A Ray head started as the README says (`ray start --head`), on loopback; its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
               "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats"]  # fmt: skip
    # --block: the head's processes belong to this one, and end when it is sent SIGTERM.
    head = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("`ray start --head` did not come up")
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # Ray's daemons (gcs_server, raylet, ...) are children of `ray start`, which stops them one by one and
        # slowly (30 s here). They are sent SIGTERM all at once, by pid, never by name (other Ray instances may
        # run on this machine), and SIGKILL if still there.
        daemons = [pid for pid in _all_pids() if pid != head.pid and _descends_from(pid, head.pid)]
        for pid in [*daemons, head.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for pid in daemons:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # `ray start` leaves its address here for later `ray.init()` calls to find: not this test's business.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        with contextlib.suppress(OSError):
            if current.read_text().strip().endswith(f":{port}"):
                current.unlink()


def test_cli_on_a_cluster_started_with_ray_start(demo: Path, tmp_path: Path, head_node: str) -> None:
    metric = ["--metric", "builtin:brightness", "--metric", "builtin:box_tightness"]
    local = _cli("--annotations", str(demo), "--out", str(tmp_path / "local.csv"), *metric)
    assert local.returncode == 0, local.stderr
    remote = _cli("--annotations", str(demo), "--out", str(tmp_path / "ray.csv"), "--engine", "ray",
                  "--address", head_node, *metric, env={"RAY_AUTH_MODE": "token"})  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()


def test_ray_flags_without_the_ray_engine_are_refused(demo: Path, tmp_path: Path) -> None:
    result = _cli("--annotations", str(demo), "--out", str(tmp_path / "o.csv"), "--address", "127.0.0.1:6379")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --address goes with --engine ray"


def test_feature_vectors_cross_from_the_actors_unchanged() -> None:
    from array import array

    from sandbox.distributed import _decode_results, _encode_results

    sent = [CallResult(0, 5, 1, None, features=array("d", [0.1, -2.5, 1e-300])), CallResult(1, 5, None, 0.25)]
    back = _decode_results(_encode_results(sent))
    assert back == sent
    assert isinstance(back[0].features, array) and back[0].features.typecode == "d"
