"""Hostile metric code against the sandbox: every attack must fail, and the run must go on.

Each test runs one hostile metric next to a benign one (mean brightness) over a few tiny images
through the real ScoringEngine (`run_hostile` in hostile_helpers). `run_hostile` itself asserts that
the run went on: the benign metric scored every image correctly, every hostile call has a result,
and no sandbox process outlived the run. The tests then check, from the outside wherever possible,
that the attack did not succeed, and that the hostile calls failed with a sensible kind.

Configurations: "full" uses every kernel layer; "landlock_only", "seccomp_only" and "bwrap_only"
turn the other kernel layers off, to show that this one layer holds on its own against the attacks
it claims to stop (sandbox.isolation.PROTECTS); "no_bwrap" is what a machine without user
namespaces gets (Landlock and seccomp); "unconfined" keeps only the always-on layers (fresh
environment, rlimits, deadlines). The `test_control_*` tests run some attacks unconfined and see
them succeed, which shows that the outside checks used everywhere else can see an attack at all.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hostile_helpers
import pytest
from hostile_helpers import (
    CONFIGS,
    Outcome,
    assert_all_failed,
    config_overrides,
    hostile_source,
    make_dataset,
    outcomes_of,
    process_state,
    processes_with,
    require_layers,
    run_hostile,
    wait_until_gone,
)

from sandbox.engine import CallResult, ScoringEngine
from sandbox.isolation import KERNEL_LAYERS, IsolationUnavailable, SandboxConfig, planned_layers, probe_machine
from sandbox.protocol import Call, ImageTask, MetricCode

SECRET_VAR = "METRICSMITH_TEST_SECRET"

# System call numbers the prelude's LIBC.syscall needs, for the architectures Landlock supports.
SYSCALLS = {
    "x86_64": {
        "clone": 56, "tgkill": 234, "io_uring_setup": 425, "bpf": 321, "userfaultfd": 323, "perf_event_open": 298,
    },
    "aarch64": {
        "clone": 220, "tgkill": 131, "io_uring_setup": 425, "bpf": 280, "userfaultfd": 282, "perf_event_open": 241,
    },
}  # fmt: skip


def syscall_numbers() -> dict[str, int]:
    numbers = SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no system call numbers known for {platform.machine()}")
    return numbers


def assert_denied(outcome: Outcome, steps: set[str] | None = None) -> dict[str, str]:
    """Every hostile call reported its steps, and every step in `steps` (default: all) was denied."""
    recorded: dict[str, str] = {}
    for result in outcome.hostile:
        assert result.kind == "exception" and result.score is None, outcome.describe()
        found = outcomes_of(result)
        assert found, f"the metric did not report its steps:\n{outcome.describe()}"
        for name, text in found.items():
            if steps is None or name in steps:
                assert text.startswith("denied"), f"{name} was not denied: {text}\n{outcome.describe()}"
        recorded.update(found)
    return recorded


# -- fixtures: things on the host side that an attack would reach -----------------------------------


@pytest.fixture
def victim() -> Iterator[subprocess.Popen]:
    """A process of the same user that metric code must not be able to touch."""
    process = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv(SECRET_VAR, value)
    return value


@pytest.fixture
def secret_holder(secret: str) -> Iterator[subprocess.Popen]:
    """A host process that has the secret in its environment from the start (so in /proc/PID/environ)."""
    process = subprocess.Popen(["sleep", "120"], env={"PATH": "/usr/bin:/bin", SECRET_VAR: secret})
    yield process
    process.kill()
    process.wait()


class Listener:
    """A real server socket in a thread that records every connection or datagram it gets."""

    def __init__(self, sock: socket.socket, stream: bool) -> None:
        self.sock = sock
        self.stream = stream
        self.received: list[bytes] = []
        self._stop = threading.Event()
        sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self.stream:
                    connection, _ = self.sock.accept()
                    with connection:
                        connection.settimeout(1.0)
                        try:
                            self.received.append(b"<connected>" + connection.recv(1024))
                        except OSError:
                            self.received.append(b"<connected>")
                else:
                    data, _ = self.sock.recvfrom(1024)
                    self.received.append(data)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def close(self) -> list[bytes]:
        """Stop listening; what arrived. Anything sent during the run has arrived by then."""
        if not self._stop.is_set():
            time.sleep(0.2)
            self.stop()
        return self.received

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sock.close()


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[dict[str, tuple[Listener, object]]]:
    """TCP and UDP on 127.0.0.1, a unix socket in tmp_path, an abstract unix socket: all listening."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = tmp_path / "l.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(unix_path))
    unix.listen(8)
    abstract_name = f"metricsmith-test-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(b"\0" + abstract_name.encode())
    abstract.listen(8)
    made = {
        "tcp": (Listener(tcp, True), tcp.getsockname()[1]),
        "udp": (Listener(udp, False), udp.getsockname()[1]),
        "unix": (Listener(unix, True), str(unix_path)),
        "abstract": (Listener(abstract, True), abstract_name),
    }
    yield made
    for listener, _ in made.values():
        listener.stop()


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int, int, int]]:
    """Names, contents and metadata (mode, owner, group, mtime) of every entry in a folder."""
    state = {}
    for entry in sorted(folder.iterdir()):
        info = entry.lstat()
        content = entry.read_bytes() if entry.is_file() else b"<dir>"
        state[entry.name] = (content, info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns)
    return state


# -- 1, 2: time ------------------------------------------------------------------------------------

LOOP_SOURCE = """
import time

def score(image, scene):
    if P["variant"] == "busy":
        while True:
            pass
    if P["variant"] == "sleep":
        time.sleep(1000)
    while True:  # "swallow": catch the soft timeout and carry on
        try:
            while True:
                pass
        except BaseException:
            pass
"""


@pytest.mark.parametrize("variant", ["busy", "sleep", "swallow"])
def test_infinite_loop_hits_the_soft_timeout(tmp_path: Path, variant: str) -> None:
    # Swallowing the soft timeout can at worst push the call to the host's hard deadline.
    hostile_on, timeout_s = {"busy": ([0, 2], 1.0), "sleep": ([1], 1.0), "swallow": ([0], 0.5)}[variant]
    source = hostile_source(LOOP_SOURCE, {"variant": variant})
    outcome = run_hostile(tmp_path, source, hostile_on=hostile_on, timeout_s=timeout_s)
    expected = {"timeout"} if variant != "swallow" else {"timeout", "hard_timeout"}
    assert_all_failed(outcome, expected)
    assert outcome.elapsed_s < 20, outcome.elapsed_s


SIGNAL_DODGE_SOURCE = """
import signal

def score(image, scene):
    if scene["image"]["id"] == 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    else:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
    while True:
        pass
"""


def test_loop_with_sigalrm_blocked_or_ignored_hits_the_hard_deadline(tmp_path: Path) -> None:
    outcome = run_hostile(tmp_path, hostile_source(SIGNAL_DODGE_SOURCE), hostile_on=[0, 1], workers=2, timeout_s=0.5)
    assert_all_failed(outcome, {"hard_timeout"})
    assert all("killed" in (result.error or "") for result in outcome.hostile), outcome.describe()
    assert outcome.report.worker_restarts >= 2
    assert outcome.elapsed_s < 40, outcome.elapsed_s


# -- 3, 4: memory and processes --------------------------------------------------------------------

MEMORY_SOURCE = """
import ctypes
import os

import numpy as np

MB = 2**20
CAP_MB = 512  # never try to hold more than this, whatever happens (twice the limit the test sets)


def by_memfd():
    held = 0
    fds = []
    while held < CAP_MB:
        fd = os.memfd_create(f"hoard{held}")
        fds.append(fd)  # kept open on purpose: closing would free it
        os.posix_fallocate(fd, 0, 64 * MB)
        held += 64
    return held


def by_sysv_shm():
    LIBC.shmat.restype = ctypes.c_void_p
    held = 0
    while held < CAP_MB:
        segment = libc_call(LIBC.shmget, 0, ctypes.c_size_t(128 * MB), 0o1600)
        address = LIBC.shmat(segment, None, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "shmat failed")
        ctypes.memset(address, 1, 128 * MB)
        LIBC.shmdt(ctypes.c_void_p(address))  # detached, but the segment keeps its memory
        held += 128
    return held


def score(image, scene):
    variant = P["variant"]
    if variant == "numpy":
        hoard = [np.ones(50 * 2**30 // 1000, np.uint8) for _ in range(1000)]
        return float(len(hoard))
    if variant == "numpy_at_once":
        return float(np.ones(50 * 2**30, np.uint8).sum())
    if variant == "bytearray":
        hoard = bytearray()
        while True:
            hoard += bytes(64 * MB)
    held = by_memfd() if variant == "memfd" else by_sysv_shm()
    return float(held)
"""


@pytest.mark.parametrize("variant", ["numpy", "numpy_at_once", "bytearray", "memfd", "sysv_shm"])
def test_memory_bomb_is_stopped_at_the_memory_limit(tmp_path: Path, variant: str) -> None:
    memory_mb = 256
    outcome = run_hostile(
        tmp_path, hostile_source(MEMORY_SOURCE, {"variant": variant}), hostile_on=[0], memory_mb=memory_mb, timeout_s=5
    )
    for result in outcome.hostile:
        if variant in ("memfd", "sysv_shm"):
            # The metric returns how many MB it managed to hold outside its address space.
            held_too_much = result.score is not None and result.score > memory_mb
            assert not held_too_much, f"{variant}: held {result.score} MB past a {memory_mb} MB limit"
            assert result.kind in {"exception", None}, outcome.describe()
        else:
            assert result.kind == "exception" and "MemoryError" in (result.error or ""), outcome.describe()


FORK_SOURCE = """
import os
import time


def stray():
    try:
        os.setsid()  # out of the worker's process group, so a group kill would miss it
        time.sleep(30)
    finally:
        os._exit(0)


def fork_loop():
    children = 0
    for _ in range(20):
        if os.fork() == 0:
            stray()
        children += 1
    return children


def raw_clone():
    pid = libc_call(LIBC.syscall, P["nr_clone"], 17, 0, 0, 0, 0)  # clone(SIGCHLD): a plain fork
    if pid == 0:
        stray()
    return pid


def score(image, scene):
    attempt("fork_loop", fork_loop)
    attempt("posix_spawn", lambda: os.posix_spawn("/usr/bin/sleep", [P["marker"], "30"], {}, setsid=True))
    attempt("raw_clone", raw_clone)
    attempt("forkpty", lambda: __import__("pty").fork())
    report()
"""


@pytest.mark.parametrize("config", ["full", "seccomp_only"])
def test_fork_bomb_is_denied_and_leaves_no_process(tmp_path: Path, config: str) -> None:
    marker = f"metricsmith-stray-{uuid.uuid4().hex}"
    params = {"marker": marker, "nr_clone": syscall_numbers()["clone"]}
    outcome = run_hostile(tmp_path, hostile_source(FORK_SOURCE, params), config=config)
    assert_denied(outcome)
    assert wait_until_gone(marker, timeout_s=1) == []
    assert processes_with(str(outcome.dataset)) == []


# -- 5, 6: running programs ------------------------------------------------------------------------

PROGRAM_SOURCE = """
import os
import subprocess


def succeeded(status):
    if status != 0:
        raise OSError(f"status {status}")
    return status


def score(image, scene):
    touch = f"touch {P['marker']}"
    if P["variant"] == "python":
        attempt("subprocess_run", lambda: subprocess.run(["touch", P["marker"]], check=True))
        attempt("os_system", lambda: succeeded(os.system(touch)))
        attempt("os_popen", lambda: succeeded(os.popen(touch).close() or 0))
        attempt("posix_spawnp", lambda: os.waitpid(os.posix_spawnp("touch", ["touch", P["marker"]], {}), 0))
    else:
        attempt("libc_system", lambda: succeeded(libc_call(LIBC.system, touch.encode())))
        argv = (_ctypes.c_char_p * 3)(b"/usr/bin/touch", P["marker"].encode(), None)
        attempt("libc_execv", lambda: libc_call(LIBC.execv, b"/usr/bin/touch", argv))
    report()
"""


@pytest.mark.parametrize("config", ["full", "seccomp_only"])
def test_subprocess_cannot_run_programs(tmp_path: Path, config: str) -> None:
    marker = tmp_path / "ran-a-program"
    source = hostile_source(PROGRAM_SOURCE, {"variant": "python", "marker": str(marker)})
    outcome = run_hostile(tmp_path, source, config=config)
    assert not marker.exists()
    assert_denied(outcome)


@pytest.mark.parametrize("config", ["full", "seccomp_only"])
def test_ctypes_libc_system_cannot_run_programs(tmp_path: Path, config: str) -> None:
    marker = tmp_path / "ran-a-program"
    source = hostile_source(PROGRAM_SOURCE, {"variant": "libc", "marker": str(marker)})
    outcome = run_hostile(tmp_path, source, config=config)
    assert not marker.exists()
    assert_denied(outcome)


# -- 7, 8, 9: network and local sockets ------------------------------------------------------------

NETWORK_SOURCE = """
import socket


def reach():
    transport, target = P["transport"], P["target"]
    if transport == "tcp":
        with socket.create_connection(("127.0.0.1", target), timeout=2) as sock:
            sock.sendall(b"exfiltrated")
    elif transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"exfiltrated", ("127.0.0.1", target))
    else:
        address = target if transport == "unix" else b"\\0" + target.encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(address)
            sock.sendall(b"exfiltrated")
    return "sent"


def score(image, scene):
    attempt(P["transport"], reach)
    report()
"""

# Which layer claims which transport: Landlock covers TCP and abstract unix sockets (ABI 4 and 6),
# seccomp every socket, bwrap a separate network namespace and a filesystem without the host's socket.
NETWORK_CASES = [
    ("tcp", "full"),
    ("tcp", "landlock_only"),
    ("tcp", "seccomp_only"),
    ("tcp", "bwrap_only"),
    ("udp", "full"),
    ("udp", "seccomp_only"),
    ("udp", "bwrap_only"),
    ("unix", "full"),
    ("unix", "seccomp_only"),
    ("unix", "bwrap_only"),
    ("abstract", "full"),
    ("abstract", "landlock_only"),
    ("abstract", "seccomp_only"),
    ("abstract", "bwrap_only"),
]


@pytest.mark.parametrize(("transport", "config"), NETWORK_CASES)
def test_no_connection_reaches_a_host_listener(
    tmp_path: Path, listeners: dict[str, tuple[Listener, object]], transport: str, config: str
) -> None:
    listener, target = listeners[transport]
    source = hostile_source(NETWORK_SOURCE, {"transport": transport, "target": target})
    outcome = run_hostile(tmp_path, source, config=config)
    assert listener.close() == [], f"the {transport} listener was reached"
    if transport == "udp" and config == "bwrap_only":
        # sendto() works inside the sandbox's own network namespace; it just reaches nobody.
        assert_all_failed(outcome, {"exception"})
    else:
        assert_denied(outcome)


# -- 10, 11, 12: secrets ---------------------------------------------------------------------------

ENV_SOURCE = """
import os

def score(image, scene):
    if scene["image"]["id"] % 2:
        raise RuntimeError(f"my environment: {dict(os.environ)!r}")
    return 1.0 if any(P["name"] in key or P["name"] in value for key, value in os.environ.items()) else 0.0
"""


@pytest.mark.parametrize("config", ["full", "unconfined"])
def test_host_environment_secret_is_not_visible(tmp_path: Path, secret: str, config: str) -> None:
    outcome = run_hostile(tmp_path, hostile_source(ENV_SOURCE, {"name": SECRET_VAR}), config=config)
    assert secret not in outcome.text()
    for result in outcome.hostile:
        if result.image_id % 2:
            assert result.kind == "exception" and "my environment" in (result.error or "")
        else:
            assert result.kind is None and result.score == 0.0, outcome.describe()


PROC_ENVIRON_SOURCE = """
import os


def secret_entries(pid):
    with open(f"/proc/{pid}/environ", "rb") as environ:
        entries = environ.read().decode(errors="replace").split("\\0")
    return [entry for entry in entries if entry.startswith(P["name"] + "=")]


def scan():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.extend(secret_entries(entry))
            except OSError:
                pass
    return found


def score(image, scene):
    attempt("holder", lambda: secret_entries(P["holder"]))
    attempt("parent", lambda: secret_entries(os.getppid()))
    attempt("scan", scan)
    report()
"""


@pytest.mark.parametrize("config", ["full", "landlock_only", "bwrap_only"])
def test_proc_environ_of_host_processes_is_unreadable(
    tmp_path: Path, secret: str, secret_holder: subprocess.Popen, config: str
) -> None:
    source = hostile_source(PROC_ENVIRON_SOURCE, {"name": SECRET_VAR, "holder": secret_holder.pid})
    outcome = run_hostile(tmp_path, source, config=config)
    assert secret not in outcome.text()
    found = assert_denied(outcome, {"holder"})
    for step in ("parent", "scan"):  # bwrap_only: readable, but only the sandbox's own processes
        assert found[step].startswith("denied") or found[step] == "ok: []", found


SSH_SOURCE = """
import os

def score(image, scene):
    attempt("read_key", lambda: open(P["key"]).read())
    attempt("list_dir", lambda: os.listdir(os.path.dirname(P["key"])))
    attempt("read_home", lambda: os.listdir(P["home"]))
    report()
"""


def fake_home(tmp_path: Path) -> tuple[Path, str]:
    """A HOME-like folder outside read_only_paths with .ssh/id_rsa holding a unique marker."""
    marker = f"FAKE-PRIVATE-KEY-{uuid.uuid4().hex}"
    key = tmp_path / "home" / ".ssh" / "id_rsa"
    key.parent.mkdir(parents=True)
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{marker}\n-----END OPENSSH PRIVATE KEY-----\n")
    return key, marker


@pytest.mark.parametrize("config", ["full", "landlock_only", "bwrap_only"])
def test_ssh_key_outside_the_dataset_is_unreadable(tmp_path: Path, config: str) -> None:
    key, marker = fake_home(tmp_path)
    source = hostile_source(SSH_SOURCE, {"key": str(key), "home": str(key.parent.parent)})
    outcome = run_hostile(tmp_path, source, config=config)
    assert marker not in outcome.text()
    assert_denied(outcome)


# -- 13, 14, 23: files and disk ----------------------------------------------------------------------

WRITE_OUTSIDE_SOURCE = """
import os


def through_symlink():
    os.symlink(P["existing"], "escape-symlink")
    with open("escape-symlink", "w") as target:
        return target.write("pwned")


def through_hardlink():
    os.link(P["existing"], "escape-hardlink")
    with open("escape-hardlink", "a") as target:
        return target.write("pwned")


def score(image, scene):
    attempt("new_file", lambda: open(P["outside"], "w").write("pwned"))
    attempt("tmp_file", lambda: open(P["tmp"], "w").write("pwned"))
    attempt("overwrite", lambda: open(P["existing"], "w").write("pwned"))
    attempt("mkdir", lambda: os.mkdir(P["outside_dir"]))
    attempt("symlink", through_symlink)
    attempt("hardlink", through_hardlink)
    report()
"""


@pytest.mark.parametrize("config", ["full", "landlock_only", "bwrap_only"])
def test_no_write_outside_scratch(tmp_path: Path, config: str) -> None:
    existing = tmp_path / "existing.txt"
    existing.write_text("original")
    paths = {
        "outside": str(tmp_path / "outside.txt"),
        "tmp": f"/tmp/metricsmith-hostile-{uuid.uuid4().hex}",
        "existing": str(existing),
        "outside_dir": str(tmp_path / "planted-dir"),
    }
    try:
        outcome = run_hostile(tmp_path, hostile_source(WRITE_OUTSIDE_SOURCE, paths), config=config, hostile_on=[0])
        assert not Path(paths["outside"]).exists()
        assert not Path(paths["tmp"]).exists()
        assert not Path(paths["outside_dir"]).exists()
        assert existing.read_text() == "original"
    finally:
        Path(paths["tmp"]).unlink(missing_ok=True)
    if config == "bwrap_only":
        # /tmp in the sandbox is its own tmpfs (with empty folders leading to the dataset's bind
        # mount): writing there works, and reaches nothing on the host, as checked above.
        assert_all_failed(outcome, {"exception"})
    else:
        assert_denied(outcome)


DISK_SOURCE = """
import os

MB = 2**20


def score(image, scene):
    written = 0
    block = b"\\0" * (4 * MB)
    try:
        if P["variant"] == "one_file":
            with open("fill.bin", "wb", buffering=0) as fill:
                while written < 2048 * MB:
                    written += fill.write(block)
        else:
            index = 0
            while written < 2048 * MB:
                with open(f"fill{index}.bin", "wb", buffering=0) as fill:
                    for _ in range(4):
                        written += fill.write(block)
                index += 1
    except OSError as error:
        raise RuntimeError(f"WRITTEN_MB={written // MB} {error!r}") from None
    return written / MB
"""

# One 2 GB file: the file-size rlimit (always on); many files: bwrap's size-limited scratch tmpfs.
DISK_CASES = [("one_file", "full"), ("one_file", "unconfined"), ("many_files", "full"), ("many_files", "bwrap_only")]


@pytest.mark.parametrize(("variant", "config"), DISK_CASES)
def test_filling_the_disk_stops_at_the_limit(tmp_path: Path, variant: str, config: str) -> None:
    # The file-size rlimit is 64 MB; the scratch tmpfs gets 32 MB when many files should fill it.
    scratch_mb = 256 if variant == "one_file" else 32
    source = hostile_source(DISK_SOURCE, {"variant": variant})
    outcome = run_hostile(tmp_path, source, config=config, hostile_on=[0, 1], scratch_mb=scratch_mb, timeout_s=5)
    limit_mb, error = (64, "File too large") if variant == "one_file" else (scratch_mb, "No space left")
    for result in outcome.hostile:
        assert result.kind == "exception" and error in (result.error or ""), outcome.describe()
        written = int((result.error or "").rsplit("WRITTEN_MB=", 1)[1].split()[0])
        assert written <= limit_mb, outcome.describe()


DATASET_SOURCE = """
import os


def replace_from_scratch(path):
    with open("forged.png", "wb") as forged:
        forged.write(b"forged")
    os.rename("forged.png", path)


def score(image, scene):
    path = P["image"]
    folder = os.path.dirname(path)
    attempt("overwrite", lambda: open(path, "wb").write(b"pwned"))
    attempt("append", lambda: open(path, "ab").write(b"pwned"))
    attempt("truncate", lambda: os.truncate(path, 0))
    attempt("rename", lambda: os.rename(path, path + ".moved"))
    attempt("replace", lambda: replace_from_scratch(path))
    attempt("create", lambda: open(os.path.join(folder, "planted.png"), "wb").write(b"x"))
    attempt("mkdir", lambda: os.mkdir(os.path.join(folder, "planted")))
    attempt("remove", lambda: os.remove(path))
    report()
"""


@pytest.mark.parametrize("config", ["full", "landlock_only", "bwrap_only"])
def test_dataset_directory_is_read_only(tmp_path: Path, config: str) -> None:
    dataset = tmp_path / "dataset"
    make_dataset(dataset, 4)
    before = snapshot(dataset)
    source = hostile_source(DATASET_SOURCE, {"image": str(dataset / "img0.png")})
    outcome = run_hostile(tmp_path, source, config=config, hostile_on=[0])
    assert snapshot(dataset) == before
    assert_denied(outcome)


METADATA_SOURCE = """
import os

def score(image, scene):
    for label, path in (("dataset", P["image"]), ("host", P["host_file"])):
        attempt(f"chmod_{label}", lambda: os.chmod(path, 0o777))
        attempt(f"chown_{label}", lambda: os.chown(path, 4242, 4242))
        attempt(f"utime_{label}", lambda: os.utime(path, (0, 0)))
        attempt(f"setxattr_{label}", lambda: os.setxattr(path, "user.metricsmith", b"pwned"))
    report()
"""


# Landlock does not cover metadata (mode, owner, times, xattrs); with no bwrap, seccomp has to.
@pytest.mark.parametrize("config", ["full", "bwrap_only", "no_bwrap"])
def test_metadata_of_host_files_is_unchanged(tmp_path: Path, config: str) -> None:
    dataset = tmp_path / "dataset"
    make_dataset(dataset, 4)
    host_files = tmp_path / "host"
    host_files.mkdir()
    (host_files / "notes.txt").write_text("mine")
    os.chmod(host_files / "notes.txt", 0o600)
    before = (snapshot(dataset), snapshot(host_files))
    params = {"image": str(dataset / "img0.png"), "host_file": str(host_files / "notes.txt")}
    outcome = run_hostile(tmp_path, hostile_source(METADATA_SOURCE, params), config=config, hostile_on=[0])
    assert (snapshot(dataset), snapshot(host_files)) == before, outcome.describe()
    assert os.listxattr(host_files / "notes.txt") == [] and os.listxattr(dataset / "img0.png") == []
    assert_denied(outcome)


# -- 15, 21: other processes -----------------------------------------------------------------------

SIGNAL_SOURCE = """
import fcntl
import os
import signal

F_SETSIG = 10


def sigio(pid):
    # No kill() at all: ask the kernel to send SIGKILL to `pid` when this pipe becomes readable.
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, fcntl.F_SETOWN, pid)
    fcntl.fcntl(read_end, F_SETSIG, signal.SIGKILL)
    fcntl.fcntl(read_end, fcntl.F_SETFL, fcntl.fcntl(read_end, fcntl.F_GETFL) | os.O_ASYNC)
    return os.write(write_end, b"x")


def score(image, scene):
    pid, vector = P["victim"], P["vector"]
    if vector == "kill":
        attempt("kill", lambda: os.kill(pid, signal.SIGKILL))
        attempt("killpg", lambda: os.killpg(pid, signal.SIGKILL))
        attempt("tgkill", lambda: libc_call(LIBC.syscall, P["nr_tgkill"], pid, pid, signal.SIGKILL))
        attempt("pidfd", lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL))
    elif vector == "host":
        attempt("kill_parent", lambda: os.kill(os.getppid(), signal.SIGKILL))
    elif vector == "own_group":
        attempt("killpg_0", lambda: os.killpg(0, signal.SIGKILL))
    elif vector == "sigio":
        attempt("sigio", lambda: sigio(pid))
    elif vector == "prlimit":
        import resource

        attempt("prlimit", lambda: resource.prlimit(pid, resource.RLIMIT_CPU, (1, 1)))
    report()
"""

# Landlock scopes signals (ABI 6), seccomp denies signals to other processes, bwrap hides them.
SIGNAL_CASES = [
    (vector, config)
    for vector in ("kill", "host", "own_group", "sigio")
    for config in ("full", "landlock_only", "seccomp_only", "bwrap_only")
]


@pytest.mark.parametrize(("vector", "config"), SIGNAL_CASES)
def test_cannot_signal_other_processes(tmp_path: Path, victim: subprocess.Popen, vector: str, config: str) -> None:
    params = {"victim": victim.pid, "vector": vector, "nr_tgkill": syscall_numbers()["tgkill"]}
    hostile_on = [0] if vector == "own_group" else [0, 2]
    outcome = run_hostile(tmp_path, hostile_source(SIGNAL_SOURCE, params), config=config, hostile_on=hostile_on)
    time.sleep(0.1)
    assert victim.poll() is None, f"the victim was killed by {vector}"
    assert process_state(victim.pid) in {"S", "R"}
    # The host (this process, the workers' parent) is still here: this line runs.
    if vector == "host" and config == "bwrap_only":
        # The worker's parent is bwrap's init inside the sandbox's pid namespace, not the host.
        assert_all_failed(outcome, {"exception"})
    elif vector == "own_group":
        # killpg(0) may reach only the worker's own group, i.e. the worker itself.
        assert_all_failed(outcome, {"exception", "crash"})
    elif vector == "sigio":
        assert_all_failed(outcome, {"exception"})  # F_SETOWN may work; the signal must not arrive
    else:
        assert_denied(outcome)


@pytest.mark.parametrize("config", ["full", "bwrap_only", "seccomp_only", "no_bwrap"])
def test_cannot_change_resource_limits_of_other_processes(
    tmp_path: Path, victim: subprocess.Popen, config: str
) -> None:
    """prlimit() on a process of the same user: RLIMIT_CPU 1 s would kill the host at its next tick."""
    limits_before = Path(f"/proc/{victim.pid}/limits").read_text()
    params = {"victim": victim.pid, "vector": "prlimit", "nr_tgkill": syscall_numbers()["tgkill"]}
    outcome = run_hostile(tmp_path, hostile_source(SIGNAL_SOURCE, params), config=config, hostile_on=[0])
    assert Path(f"/proc/{victim.pid}/limits").read_text() == limits_before, outcome.describe()
    assert_denied(outcome)


PTRACE_SOURCE = """
import ctypes
import os


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def first_mapping(pid):
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return int(maps.readline().split("-")[0], 16)
    except (OSError, ValueError):
        return 0x400000


def read_mem(pid):
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(first_mapping(pid))
        return len(mem.read(16))


def vm_readv(pid):
    buffer = ctypes.create_string_buffer(16)
    local = IoVec(ctypes.cast(buffer, ctypes.c_void_p), 16)
    remote = IoVec(first_mapping(pid), 16)
    return libc_call(LIBC.process_vm_readv, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)


def score(image, scene):
    pid = P["victim"]
    LIBC.ptrace.restype = ctypes.c_long
    attempt("ptrace_attach", lambda: libc_call(LIBC.ptrace, ctypes.c_long(16), ctypes.c_long(pid), None, None))
    attempt("ptrace_seize", lambda: libc_call(LIBC.ptrace, ctypes.c_long(0x4206), ctypes.c_long(pid), None, None))
    attempt("process_vm_readv", lambda: vm_readv(pid))
    attempt("proc_mem_victim", lambda: read_mem(pid))
    attempt("proc_mem_host", lambda: read_mem(os.getppid()))
    report()
"""

# seccomp denies the ptrace family of calls; /proc/PID/mem is a file, which only Landlock and bwrap hide.
PTRACE_STEPS = {
    "full": None,
    "landlock_only": None,
    "bwrap_only": {"ptrace_attach", "ptrace_seize", "process_vm_readv", "proc_mem_victim"},
    "seccomp_only": {"ptrace_attach", "ptrace_seize", "process_vm_readv"},
}


@pytest.mark.parametrize("config", sorted(PTRACE_STEPS))
def test_cannot_trace_or_read_memory_of_other_processes(tmp_path: Path, victim: subprocess.Popen, config: str) -> None:
    outcome = run_hostile(tmp_path, hostile_source(PTRACE_SOURCE, {"victim": victim.pid}), config=config)
    assert process_state(victim.pid) == "S", "the victim is stopped or gone: it was traced"
    found = assert_denied(outcome, PTRACE_STEPS[config])
    # A bad address would mean the access check passed and only the address was wrong.
    assert all("Bad address" not in found[step] for step in PTRACE_STEPS[config] or found), found


# -- 16, 17, 18, 19: breaking the worker -----------------------------------------------------------

JUNK_SOURCE = """
import json
import os
import struct
import sys


def all_fds():
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 21))


def score(image, scene):
    variant = P["variant"]
    if variant == "garbage":
        for fd in all_fds():
            try:
                os.write(fd, b"\\xff\\xfe GARBAGE, not a frame " * 64)
            except OSError:
                pass
    elif variant == "forged_frame":
        body = json.dumps({"t": "results", "chunk": 10**6, "rows": [{"score": 1.0}], "done": True}).encode()
        for fd in range(3, 21):
            try:
                os.write(fd, struct.pack(">I", len(body)) + body)
            except OSError:
                pass
    elif variant == "close_all":
        os.closerange(0, 4096)
    elif variant == "print":
        print("\\x00\\xff{not a frame}" * 1000)
        sys.stdout.flush()
        sys.stderr.write("\\x00\\x00\\x00\\x10 junk on stderr\\n" * 100)
    return 1.0
"""

JUNK_KINDS = {"garbage": {"protocol", "crash"}, "forged_frame": {"protocol"}, "close_all": {"crash", "protocol"}}


@pytest.mark.parametrize("variant", ["garbage", "forged_frame", "close_all", "print"])
def test_junk_on_the_protocol_pipe_fails_only_that_call(tmp_path: Path, variant: str) -> None:
    outcome = run_hostile(tmp_path, hostile_source(JUNK_SOURCE, {"variant": variant}), hostile_on=[0, 2])
    if variant == "print":  # stdout is not the protocol pipe: printing is harmless
        assert all(r.kind is None and r.score == 1.0 for r in outcome.hostile), outcome.describe()
    else:
        assert_all_failed(outcome, JUNK_KINDS[variant])
        assert outcome.report.worker_restarts >= 2


EXIT_SOURCE = """
import os
import signal
import sys

def score(image, scene):
    variant = P["variant"]
    if variant == "os_exit":
        os._exit(3)
    if variant == "sys_exit":
        sys.exit(3)
    if variant == "abort":
        os.abort()
    os.kill(os.getpid(), signal.SIGKILL)
"""

EXIT_EXPECTED = {
    "os_exit": ("crash", "status 3"),
    "sys_exit": ("exception", "SystemExit"),
    "abort": ("crash", ""),
    "self_kill": ("crash", ""),
}


@pytest.mark.parametrize("variant", sorted(EXIT_EXPECTED))
def test_exiting_worker_is_a_crash_and_the_run_goes_on(tmp_path: Path, variant: str) -> None:
    outcome = run_hostile(tmp_path, hostile_source(EXIT_SOURCE, {"variant": variant}), hostile_on=[1, 3])
    kind, text = EXIT_EXPECTED[variant]
    assert_all_failed(outcome, {kind})
    assert all(text in (result.error or "") for result in outcome.hostile), outcome.describe()


SEGFAULT_SOURCE = """
import ctypes

def score(image, scene):
    return float(len(ctypes.string_at(0)))
"""


@pytest.mark.parametrize("config", ["full", "no_bwrap"])
def test_segfault_is_a_crash_naming_sigsegv(tmp_path: Path, config: str) -> None:
    outcome = run_hostile(tmp_path, hostile_source(SEGFAULT_SOURCE), config=config, hostile_on=[0, 2])
    assert_all_failed(outcome, {"crash"})
    assert all("SIGSEGV" in (result.error or "") for result in outcome.hostile), outcome.describe()


RECURSION_SOURCE = """
import sys


def down(depth):
    return down(depth + 1) + 1


def score(image, scene):
    variant = P["variant"]
    if variant != "plain":
        sys.setrecursionlimit(10**6)
    if variant == "c_stack":  # repr() recurses in C, one C frame per level
        nested = []
        for _ in range(10**6):
            nested = [nested]
        return float(len(repr(nested)))
    return float(down(0))
"""


@pytest.mark.parametrize("variant", ["plain", "high_limit", "c_stack"])
def test_infinite_recursion_fails_the_call_only(tmp_path: Path, variant: str) -> None:
    outcome = run_hostile(tmp_path, hostile_source(RECURSION_SOURCE, {"variant": variant}), hostile_on=[0])
    assert_all_failed(outcome, {"exception", "crash", "timeout", "hard_timeout"})
    if variant == "plain":
        assert_all_failed(outcome, {"exception"})
        assert "RecursionError" in (outcome.hostile[0].error or "")


# -- 20: outputs -----------------------------------------------------------------------------------

OUTPUT_SOURCE = """
import numpy as np

VALUES = [
    lambda: "abc",
    lambda: [1],
    lambda: object(),
    lambda: float("nan"),
    lambda: float("inf"),
    lambda: -float("inf"),
    lambda: np.float32(0.5),
    lambda: np.array(float("nan")),
    lambda: True,
    lambda: 10**400,
    lambda: None,
]

def score(image, scene):
    return VALUES[scene["image"]["id"]]()
"""

OUTPUT_EXPECTED = [
    ("invalid_output", None),
    ("invalid_output", None),
    ("invalid_output", None),
    ("invalid_output", None),
    ("invalid_output", None),
    ("invalid_output", None),
    (None, 0.5),
    ("invalid_output", None),
    ("invalid_output", None),
    ({"invalid_output", "exception"}, None),  # an int too large for a float
    (None, None),  # None means "no score here", and is fine
]


def test_non_float_and_non_finite_scores_are_invalid_output(tmp_path: Path) -> None:
    outcome = run_hostile(tmp_path, hostile_source(OUTPUT_SOURCE), images=len(OUTPUT_EXPECTED))
    by_image = {result.image_id: result for result in outcome.hostile}
    for index, (kind, score) in enumerate(OUTPUT_EXPECTED):
        result = by_image[index]
        kinds = kind if isinstance(kind, set) else {kind}
        assert result.kind in kinds and result.score == score, f"image {index}: {result}"


# -- 22: metric load -------------------------------------------------------------------------------

IMPORT_SOURCE = """
import os

if P["variant"] == "raise":
    raise RuntimeError("refusing to load")
if P["variant"] == "loop":
    while True:
        pass
if P["variant"] == "exit":
    os._exit(3)


def score(image, scene):
    return 1.0
"""


@pytest.mark.parametrize("variant", ["raise", "loop", "exit"])
def test_module_level_misbehaviour_fails_only_that_metric(tmp_path: Path, variant: str) -> None:
    source = hostile_source(IMPORT_SOURCE, {"variant": variant})
    outcome = run_hostile(tmp_path, source, startup_timeout_s=5)
    assert_all_failed(outcome, {"metric_load", "timeout", "hard_timeout", "crash"})
    if variant == "raise":
        assert_all_failed(outcome, {"metric_load"})
        assert "refusing to load" in outcome.report.metric_errors["hostile"]
        # Each item says why in words, the traceback's last line: what a score summary shows.
        assert {result.error for result in outcome.hostile} == {
            "metric hostile failed to load: RuntimeError: refusing to load"
        }


# -- 24: kernel surfaces ---------------------------------------------------------------------------

KERNEL_SOURCE = """
import ctypes
import os

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000


def clone_into_new_user_namespace():
    pid = libc_call(LIBC.syscall, P["nr"]["clone"], CLONE_NEWUSER | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    return pid


def mount_tmpfs():
    os.makedirs("mnt", exist_ok=True)
    return libc_call(LIBC.mount, b"none", os.path.abspath("mnt").encode(), b"tmpfs", 0, None)


def score(image, scene):
    nr = P["nr"]
    params = ctypes.create_string_buffer(120)
    attempt("io_uring_setup", lambda: libc_call(LIBC.syscall, nr["io_uring_setup"], 8, params))
    attempt("unshare_user", lambda: libc_call(LIBC.unshare, CLONE_NEWUSER))
    attempt("unshare_mount", lambda: libc_call(LIBC.unshare, CLONE_NEWNS))
    attempt("unshare_net", lambda: libc_call(LIBC.unshare, CLONE_NEWNET))
    attempt("clone_newuser", clone_into_new_user_namespace)
    attempt("mount", mount_tmpfs)
    attempt("setns", lambda: libc_call(LIBC.setns, 0, 0))
    attempt("bpf", lambda: libc_call(LIBC.syscall, nr["bpf"], 0, None, 0))
    attempt("userfaultfd", lambda: libc_call(LIBC.syscall, nr["userfaultfd"], 0))
    attempt("perf_event_open", lambda: libc_call(LIBC.syscall, nr["perf_event_open"], None, 0, -1, -1, 0))
    attempt("chroot", lambda: libc_call(LIBC.chroot, b"."))
    report()
"""


@pytest.mark.parametrize("config", ["full", "seccomp_only"])
def test_namespace_mount_and_io_uring_syscalls_fail(tmp_path: Path, config: str) -> None:
    source = hostile_source(KERNEL_SOURCE, {"nr": syscall_numbers()})
    outcome = run_hostile(tmp_path, source, config=config)
    found = assert_denied(outcome)
    # Denied by seccomp with EPERM, not merely refused for bad arguments.
    assert all("Operation not permitted" in text for text in found.values()), found


# -- 25: configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", KERNEL_LAYERS)
def test_required_isolation_with_a_layer_turned_off_is_refused(layer: str) -> None:
    with pytest.raises(IsolationUnavailable, match=layer):
        ScoringEngine(SandboxConfig(workers=1, require_isolation=True, **{layer: False}))


def test_required_isolation_is_accepted_when_every_layer_is_there(tmp_path: Path) -> None:
    require_layers("full")
    outcome = run_hostile(
        tmp_path, hostile_source("def score(image, scene):\n    return 1.0\n"), require_isolation=True
    )
    assert all(layer.active for layer in outcome.report.layers), outcome.report.layers


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_report_lists_every_layer_as_planned(tmp_path: Path, config: str) -> None:
    outcome = run_hostile(tmp_path, hostile_source("def score(image, scene):\n    return 1.0\n"), config=config)
    layers = {layer.name: layer for layer in outcome.report.layers}
    assert sorted(layers) == sorted(["rlimits", "privileges", *KERNEL_LAYERS])
    assert layers["rlimits"].active and layers["privileges"].active
    plan = planned_layers(SandboxConfig(workers=1, **config_overrides(config)))
    assert {name: layers[name].active for name in KERNEL_LAYERS} == plan
    assert plan == {name: name in CONFIGS[config] for name in KERNEL_LAYERS}
    assert all(layer.detail for layer in layers.values())


def test_a_missing_layer_skips_with_the_probe_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine without a layer, its tests skip and say why, in the probe's own words."""
    real = probe_machine()
    reason = "bwrap cannot create namespaces here: (simulated for this test)"
    fake = real.model_copy(
        update={
            "layers": tuple(
                layer.model_copy(update={"available": False, "detail": reason}) if layer.name == "bwrap" else layer
                for layer in real.layers
            )
        }
    )
    monkeypatch.setattr(hostile_helpers, "probe_machine", lambda: fake)
    with pytest.raises(pytest.skip.Exception, match=r"bwrap is unavailable on this machine: .*simulated"):
        require_layers("full")
    require_layers("no_bwrap")  # needs no bwrap: does not skip


# -- integrity of the other metrics' results -------------------------------------------------------

FORGE_SOURCE = """
import sys

def score(image, scene):
    worker = sys.modules["__main__"]  # the worker runs as `python -m sandbox.worker`
    worker._run_call = lambda *args: {"score": 999.0}
    return 1.0
"""


def test_cannot_forge_the_scores_of_other_metrics_in_separate_workers(tmp_path: Path) -> None:
    """With share_workers=False, one metric patching its worker cannot change what another scores."""
    outcome = run_hostile(tmp_path, hostile_source(FORGE_SOURCE), hostile_on=[0], share_workers=False)
    assert all(result.score != 999.0 for result in outcome.benign), outcome.describe()


def test_shared_workers_are_the_documented_limit_of_forging(tmp_path: Path) -> None:
    """Sharing workers (the fast default) lets a metric forge its siblings' scores, and only theirs.

    This is the limit the README states. If it ever stops holding, the README must change too.
    """
    with pytest.raises(AssertionError, match="999"):
        run_hostile(tmp_path / "shared", hostile_source(FORGE_SOURCE), hostile_on=[0])
    # The forgery stays inside that run: a later run of the same benign metric is untouched.
    outcome = run_hostile(tmp_path / "later", hostile_source("def score(image, scene):\n    return 1.0\n"))
    assert all(result.score != 999.0 for result in outcome.benign)


# -- controls: unconfined, the same attacks do work, and the outside checks see them ---------------


def test_control_attacks_succeed_unconfined(
    tmp_path: Path, listeners: dict[str, tuple[Listener, object]], secret: str, secret_holder: subprocess.Popen
) -> None:
    require_layers("unconfined")
    marker = tmp_path / "ran-a-program"
    outcome = run_hostile(
        tmp_path / "programs",
        hostile_source(PROGRAM_SOURCE, {"variant": "python", "marker": str(marker)}),
        config="unconfined",
        hostile_on=[0],
    )
    assert marker.exists(), outcome.describe()

    listener, port = listeners["tcp"]
    outcome = run_hostile(
        tmp_path / "tcp",
        hostile_source(NETWORK_SOURCE, {"transport": "tcp", "target": port}),
        config="unconfined",
        hostile_on=[0],
    )
    assert listener.close() == [b"<connected>exfiltrated"], outcome.describe()

    key, key_marker = fake_home(tmp_path)
    outcome = run_hostile(
        tmp_path / "ssh",
        hostile_source(SSH_SOURCE, {"key": str(key), "home": str(key.parent.parent)}),
        config="unconfined",
        hostile_on=[0],
    )
    assert key_marker in outcome.text()

    outcome = run_hostile(
        tmp_path / "environ",
        hostile_source(PROC_ENVIRON_SOURCE, {"name": SECRET_VAR, "holder": secret_holder.pid}),
        config="unconfined",
        hostile_on=[0],
    )
    if os.geteuid() == 0:
        # Even unconfined, a worker started by root drops every capability, and the kernel then
        # refuses it another root process's environ (the reader's capabilities must cover the target's).
        assert secret not in outcome.text()
    else:
        assert secret in outcome.text()


SPY_SOURCE = """
import sys

CAUGHT = []


class Catcher:
    def write(self, text):
        CAUGHT.append(text)
        return len(text)

    def flush(self):
        pass


def score(image, scene):
    sys.stdout = sys.stderr = Catcher()  # kept after the call: the next call's print() would come here
    return float(len("".join(CAUGHT)))
"""

TALKER_SOURCE = """
def score(image, scene):
    print("TALKER-OUTPUT")
    raise ValueError("talker failed")
"""


def test_a_metric_that_takes_over_stdout_catches_nothing_another_call_prints(tmp_path: Path) -> None:
    # Each call's print() capture is set as stdout and stderr before the call: a metric that replaced them sees
    # none of the next calls' output, and a failed call's error still carries what that call printed.
    items = make_dataset(tmp_path / "dataset", 3)
    metrics = [
        MetricCode(name="spy", level="image", source=SPY_SOURCE, filename="spy.py"),
        MetricCode(name="talker", level="image", source=TALKER_SOURCE, filename="talker.py"),
    ]
    tasks = [
        ImageTask(image_id=index, path=path, scene=scene, calls=(Call(metric=0, obj=None), Call(metric=1, obj=None)))
        for index, (path, scene) in enumerate(items)
    ]
    results: list[CallResult] = []
    config = SandboxConfig(workers=1, read_only_paths=(str(tmp_path / "dataset"),))
    ScoringEngine(config).run(metrics, tasks, results.extend)
    spy = [result for result in results if result.metric == 0]
    talker = [result for result in results if result.metric == 1]
    assert [result.score for result in spy] == [0.0, 0.0, 0.0], spy
    assert len(talker) == 3
    assert all(result.kind == "exception" and "TALKER-OUTPUT" in (result.error or "") for result in talker), talker


SURROGATE_SOURCE = """
def score(image, scene):
    print("printed \\ud800 here")
    raise ValueError("bad \\udc80 value")
"""


def test_a_lone_surrogate_in_an_error_or_a_print_still_reaches_the_host_as_that_error(tmp_path: Path) -> None:
    # UTF-8 can't hold a lone surrogate: sent as it is, it made the frame invalid and every call a protocol failure.
    outcome = run_hostile(tmp_path, SURROGATE_SOURCE, images=2)
    assert outcome.report.worker_restarts == 0
    assert_all_failed(outcome, {"exception"})
    for result in outcome.hostile:
        error = result.error or ""
        assert "ValueError: bad \\udc80 value" in error and "printed \\ud800 here" in error, error
