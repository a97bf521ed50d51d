"""Which isolation layers this machine offers, and which a run will use.

The always-on layers (fresh environment, rlimits, no_new_privs, parent-death signal, own process
group, host-side deadlines, JSON-only protocol) need nothing from the machine. The kernel layers are
probed at run time: Landlock by asking the kernel for its ABI, seccomp by building a filter with
libseccomp, bubblewrap by running it once. `metricsmith doctor` then confirms them in a real worker.
"""

from __future__ import annotations

import functools
import os

from pydantic import BaseModel, ConfigDict, Field

from sandbox import bwrap, landlock, seccomp_filter

KERNEL_LAYERS = ("landlock", "seccomp", "bwrap")

# What each layer stops; `doctor` lists these as missing protections when the layer is off.
PROTECTS = {
    "landlock": "reading files outside the runtime and dataset (~/.ssh, /proc/*/environ), writing outside scratch, TCP",
    "seccomp": "running programs, forking, opening sockets (TCP, UDP, unix), signalling or tracing other processes",
    "bwrap": "seeing the host's files, processes and network at all (separate namespaces)",
}


class SandboxConfig(BaseModel):
    """How workers are run. `None` for a kernel layer means: use it when the machine offers it."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    memory_mb: int = Field(default=2048, ge=64)
    scratch_mb: int = Field(default=256, ge=1)
    landlock: bool | None = None
    seccomp: bool | None = None
    bwrap: bool | None = None
    require_isolation: bool = False
    # True: every metric of a run shares the workers, so each image is decoded once for all of them,
    # but a hostile metric can tamper with the others' scores. False: a worker pool per metric.
    share_workers: bool = True
    chunk_images: int = Field(default=16, ge=1)
    startup_timeout_s: float = 60.0
    recycle_after_images: int = 2000
    read_only_paths: tuple[str, ...] = ()


class LayerAvailability(BaseModel):
    name: str
    available: bool
    detail: str


class MachineLayers(BaseModel):
    running_as_root: bool
    layers: tuple[LayerAvailability, ...]

    def get(self, name: str) -> LayerAvailability:
        return next(layer for layer in self.layers if layer.name == name)


@functools.cache
def probe_machine() -> MachineLayers:
    """Probe the kernel layers once per process."""
    abi = landlock.abi_version()
    landlock_layer = LayerAvailability(
        name="landlock",
        available=abi >= 1,
        detail=f"Landlock ABI {abi}" if abi >= 1 else "Landlock is not enabled in this kernel (needs Linux >= 5.13)",
    )
    seccomp_ok, seccomp_detail = seccomp_filter.available()
    bwrap_ok, bwrap_detail = bwrap.probe()
    return MachineLayers(
        running_as_root=os.geteuid() == 0,
        layers=(
            landlock_layer,
            LayerAvailability(name="seccomp", available=seccomp_ok, detail=seccomp_detail),
            LayerAvailability(name="bwrap", available=bwrap_ok, detail=bwrap_detail),
        ),
    )


class IsolationUnavailable(Exception):
    """Fail-closed isolation was demanded and this machine can't provide it."""


def planned_layers(config: SandboxConfig) -> dict[str, bool]:
    """Decide, per kernel layer, whether workers will use it. Raises when a demanded layer is missing."""
    machine = probe_machine()
    plan: dict[str, bool] = {}
    missing: list[str] = []
    for name in KERNEL_LAYERS:
        wanted: bool | None = getattr(config, name)
        layer = machine.get(name)
        if wanted is False:
            plan[name] = False
        elif layer.available:
            plan[name] = True
        else:
            plan[name] = False
            if wanted is True or config.require_isolation:
                missing.append(f"{name} ({layer.detail})")
        if config.require_isolation and wanted is False:
            missing.append(f"{name} (turned off by configuration)")
    if missing:
        raise IsolationUnavailable("isolation required but unavailable: " + "; ".join(missing))
    return plan
