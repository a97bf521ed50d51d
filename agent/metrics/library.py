"""The metric library: promoted metrics, each version kept, each bound to the code that was approved.

Layout of a library directory (`--library DIR`, else `$METRICSMITH_LIBRARY`, else
`./metricsmith-library`):

    DIR/
      .lock                      # fcntl lock file: one writer at a time, across processes
      NAME/
        v1/metric.py             # the exact source that was approved
        v1/manifest.json         # LibraryManifest, below
        v2/...

Promoting a metric whose code differs from the latest version of that name makes a new version;
older versions stay readable as `lib:NAME@1`. Promoting the same code again changes nothing and
returns the existing version. A version is written into a temporary folder inside DIR and renamed
into place, under the lock, so a reader never sees half a version and two processes promoting at
once never take the same number.

Reading checks the binding: `metric.py`'s sha256 must equal the manifest's `code_sha256`. A file
edited after approval is refused, because what runs must be what a human approved.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import UserError
from agent.metrics.contract import (
    NAME_PATTERN,
    MetricSpec,
    list_builtin_metrics,
    load_metric_file,
    load_metric_files,
    parse_metric_source,
)

__all__ = [
    "LIBRARY_PREFIX",
    "Approval",
    "LibraryEntry",
    "LibraryManifest",
    "LibraryRef",
    "Provenance",
    "copy_pinned_versions",
    "default_library_dir",
    "latest_library_refs",
    "library_metrics",
    "library_versions",
    "list_library",
    "load_library_metric",
    "load_pinned_metrics",
    "promote",
    "remove_metric",
    "resolve_metric",
    "resolve_metrics",
]

LIBRARY_PREFIX = "lib:"
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
_REF = re.compile(r"^lib:(?P<name>[a-z][a-z0-9_]*)(?:@(?P<version>[1-9][0-9]*))?$")


class Provenance(BaseModel):
    """Where a promoted metric came from."""

    model_config = ConfigDict(extra="forbid")

    backend: str | None = None
    model: str | None = None
    transcript: str | None = None
    transcript_sha256: str | None = None
    templates: dict[str, str] = Field(default_factory=dict)
    dataset_fingerprint: str | None = None
    idea: str | None = None
    run_dir: str | None = None


class Approval(BaseModel):
    """The human decision (or the explicit batch policy) that let the metric in."""

    model_config = ConfigDict(extra="forbid")

    approver: str
    approved_at: str
    note: str | None = None
    # Set when the approval came from `--approve-passing`: the criteria it applied.
    policy: str | None = None
    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LibraryManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    level: str
    suspicious: str
    description: str
    promoted_at: str
    approval: Approval
    provenance: Provenance = Field(default_factory=Provenance)
    validation: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None


class LibraryEntry(BaseModel):
    """A version as found on disk."""

    manifest: LibraryManifest
    path: Path  # metric.py


class LibraryRef(BaseModel):
    """One exact library version, as a transcript pins it: a replay must compare against this code and no other."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def of(cls, manifest: LibraryManifest) -> LibraryRef:
        return cls(name=manifest.name, version=manifest.version, code_sha256=manifest.code_sha256)

    @property
    def ref(self) -> str:
        return f"{LIBRARY_PREFIX}{self.name}@{self.version}"


def default_library_dir(given: Path | None = None) -> Path:
    if given is not None:
        return given
    return Path(os.environ.get("METRICSMITH_LIBRARY") or "metricsmith-library")


def check_library_folder(library: Path) -> None:
    """Refuse a library that can't take a new version: checked before an approval, which a failed promotion
    would otherwise leave approved and not promoted."""
    if library.exists():
        if not library.is_dir():
            raise UserError(f"{library}: the library is a folder, and this is a file; give another --library")
        if not os.access(library, os.W_OK | os.X_OK):
            raise UserError(f"{library}: the library folder is not writable")
        return
    parent = library.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{library}: the library folder can't be made in {parent}")


LOCK_WAIT_S = 30.0  # how long a promotion waits for another process's hold on the library


@contextlib.contextmanager
def _locked(library: Path) -> Iterator[None]:
    library.mkdir(parents=True, exist_ok=True)
    with open(library / ".lock", "a+b") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:  # not a blocking flock: a process that holds the lock forever must not hang this one silently
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(
                        f"{library}: another process has held the library's lock ({library / '.lock'}) for "
                        f"{LOCK_WAIT_S:g} s; try again when it is done"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _versions_on_disk(library: Path, name: str) -> list[int]:
    folder = library / name
    if not folder.is_dir():
        return []
    found = (_VERSION_DIR.match(child.name) for child in folder.iterdir() if child.is_dir())
    return sorted(int(match.group(1)) for match in found if match)


def _read_manifest(path: Path) -> LibraryManifest:
    try:
        return LibraryManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: missing; this library version is incomplete") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise UserError(f"{path}: invalid manifest: {where}: {first['msg']}") from None


def _entry(library: Path, name: str, version: int) -> LibraryEntry:
    folder = library / name / f"v{version}"
    return LibraryEntry(manifest=_read_manifest(folder / "manifest.json"), path=folder / "metric.py")


def library_versions(library: Path, name: str) -> list[LibraryEntry]:
    """Every version of one metric, oldest first."""
    return [_entry(library, name, version) for version in _versions_on_disk(library, name)]


def list_library(library: Path) -> list[LibraryEntry]:
    """The latest version of every metric, by name."""
    if not library.is_dir():
        return []
    entries = []
    for child in sorted(library.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and (versions := _versions_on_disk(library, child.name)):
            entries.append(_entry(library, child.name, versions[-1]))
    return entries


def promote(
    library: Path,
    source: str,
    approval: Approval,
    provenance: Provenance | None = None,
    validation: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> LibraryEntry:
    """Add approved code to the library as the next version of its NAME (or return the same code's version)."""
    spec = parse_metric_source(source, path="<promoted>")
    if approval.code_sha256 != spec.code_sha256:
        raise UserError(
            f"metric {spec.name}: the approval is for code {approval.code_sha256[:12]}, "
            f"but the code to promote is {spec.code_sha256[:12]}; approve this code first"
        )
    with _locked(library):
        versions = _versions_on_disk(library, spec.name)
        if versions:
            latest = _entry(library, spec.name, versions[-1])
            if latest.manifest.code_sha256 == spec.code_sha256:
                return latest
        version = (versions[-1] if versions else 0) + 1
        manifest = LibraryManifest(
            name=spec.name,
            version=version,
            code_sha256=spec.code_sha256,
            level=spec.level,
            suspicious=spec.suspicious,
            description=spec.description,
            promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
            approval=approval,
            provenance=provenance or Provenance(),
            validation=validation,
            evaluation=evaluation,
        )
        (library / spec.name).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=library))
        try:
            (staging / "metric.py").write_text(source, encoding="utf-8")
            (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
            for file in staging.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            os.rename(staging, library / spec.name / f"v{version}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return _entry(library, spec.name, version)


def remove_metric(library: Path, name: str) -> int:
    """Remove every version of a metric; returns how many. Unknown names are a UserError."""
    with _locked(library):
        versions = _versions_on_disk(library, name)
        if not versions:
            raise UserError(f"no metric named {name} in the library {library}")
        # Rename first, so readers see either the whole metric or none of it.
        doomed = Path(tempfile.mkdtemp(prefix=".removed-", dir=library))
        os.rename(library / name, doomed / name)
        shutil.rmtree(doomed)
        return len(versions)


def load_library_metric(ref: str, library: Path) -> MetricSpec:
    """`lib:NAME` (latest) or `lib:NAME@VERSION`, checked against the sha256 its approval is bound to."""
    match = _REF.match(ref)
    if match is None:
        raise UserError(f"{ref}: a library metric is lib:NAME or lib:NAME@VERSION")
    name, wanted = match.group("name"), match.group("version")
    versions = _versions_on_disk(library, name)
    if not versions and not library.is_dir():
        raise UserError(f"{ref}: the library {library} does not exist (--library, or $METRICSMITH_LIBRARY)")
    if not versions:
        raise UserError(f"{ref}: no metric named {name} in the library {library}")
    version = int(wanted) if wanted else versions[-1]
    if version not in versions:
        shown = ", ".join(str(v) for v in versions)
        raise UserError(f"{ref}: {name} has no version {version} (versions: {shown})")
    entry = _entry(library, name, version)
    source = entry.path.read_text(encoding="utf-8")
    spec = parse_metric_source(source, path=f"lib:{name}@{version}", origin="library")
    if spec.code_sha256 != entry.manifest.code_sha256:
        raise UserError(
            f"{ref}: {entry.path} was changed after it was approved (sha256 {spec.code_sha256[:12]}, "
            f"approved {entry.manifest.code_sha256[:12]}); promote the new code through review instead"
        )
    return spec


def latest_library_refs(library: Path) -> list[LibraryRef]:
    """The latest version of every metric in the library, as pins."""
    return [LibraryRef.of(entry.manifest) for entry in list_library(library)]


def load_pinned_metrics(refs: Sequence[LibraryRef], library: Path) -> list[MetricSpec]:
    """Exactly the pinned versions, each checked against its sha256; a missing or different one is refused."""
    specs = []
    for pin in refs:
        try:
            spec = load_library_metric(pin.ref, library)
        except UserError as error:
            raise UserError(
                f"the recording was made with {pin.ref} (sha256 {pin.code_sha256[:12]}), which the library "
                f"{library} cannot give: {error}; pass --library with the library it was recorded with"
            ) from None
        if spec.code_sha256 != pin.code_sha256:
            raise UserError(
                f"{pin.ref} in {library} is other code (sha256 {spec.code_sha256[:12]}) than the recording's "
                f"({pin.code_sha256[:12]}); pass --library with the library it was recorded with"
            )
        specs.append(spec)
    return specs


def library_metrics(
    library: Path | None, pinned: Sequence[LibraryRef] | None = None
) -> tuple[list[LibraryRef], list[MetricSpec]]:
    """Every metric usable by name, and the pins that record the promoted ones: the built-ins, and the
    pinned promoted versions (default: the latest version of every promoted metric in the library)."""
    folder = default_library_dir(library)
    pins = list(latest_library_refs(folder) if pinned is None else pinned)
    return pins, [*list_builtin_metrics(), *load_pinned_metrics(pins, folder)]


def copy_pinned_versions(refs: Sequence[LibraryRef], source: Path, target: Path) -> None:
    """Copy the pinned versions (checked first) from one library into another, keeping their version numbers."""
    load_pinned_metrics(refs, source)
    for pin in refs:
        destination = target / pin.name / f"v{pin.version}"
        if not destination.exists():
            shutil.copytree(source / pin.name / f"v{pin.version}", destination)


def resolve_metric(ref: str, library: Path | None = None) -> MetricSpec:
    """Any metric reference: a file path, `builtin:NAME`, `lib:NAME` or `lib:NAME@VERSION`."""
    if ref.startswith(LIBRARY_PREFIX):
        return load_library_metric(ref, default_library_dir(library))
    return load_metric_file(ref)


def resolve_metrics(ref: str, library: Path | None = None) -> list[MetricSpec]:
    """What a `--metric` reference names: one metric, or each metric a learned file declares per error type."""
    if ref.startswith(LIBRARY_PREFIX):
        return [load_library_metric(ref, default_library_dir(library))]
    return load_metric_files(ref)
