"""`metricsmith library`: the built-in metrics and the promoted ones."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from agent.cli.console import EXIT_OK, stderr, stdout
from agent.cli.metric_options import add_library_option
from agent.errors import UserError
from agent.metrics.contract import (
    BUILTIN_PREFIX,
    MetricSpec,
    builtin_metric_names,
    code_sha256,
    list_builtin_metrics,
    load_metric_file,
)
from agent.metrics.library import LibraryEntry, default_library_dir, library_versions, list_library, remove_metric

__all__ = ["cmd_library", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    library = commands.add_parser("library", help=cmd_library.__doc__, description=cmd_library.__doc__)
    library.add_argument("action", choices=["list", "show", "remove"])
    library.add_argument("name", nargs="?", help="the metric to show or remove")
    library.add_argument("--json", action="store_true")
    add_library_option(library)
    library.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    library.set_defaults(handler=cmd_library)


def cmd_library(args: argparse.Namespace) -> int:
    """The metrics you can use: built-ins (--metric builtin:NAME) and promoted ones (--metric lib:NAME[@VERSION]).

    list: every built-in and the latest version of every promoted metric; show NAME: every version of a
    promoted metric with its approval, and the latest code; remove NAME: delete every version of it.
    """
    library = default_library_dir(args.library)
    if args.action != "list" and not args.name:
        raise UserError(f"metricsmith library {args.action}: name the metric (metricsmith library {args.action} NAME)")
    if args.action == "remove":
        count = remove_metric(library, args.name)
        stderr.print(f"removed {args.name} ({count} version{'s' if count != 1 else ''}) from {library}")
        return EXIT_OK
    if args.action == "show":
        entries = library_versions(library, args.name)
        if not entries and args.name in builtin_metric_names():
            spec = load_metric_file(f"{BUILTIN_PREFIX}{args.name}")
            if args.json:
                stdout.print_json(json.dumps([_spec_summary(spec) | {"source": "builtin", "code": spec.source}]))
            else:
                stdout.print(f"{spec.name}: built-in, use as --metric builtin:{spec.name}")
                stdout.print(_syntax(spec.source, "python", line_numbers=True))
            return EXIT_OK
        if not entries:
            raise UserError(f"no metric named {args.name} in the library {library} nor among the built-ins")
        if args.json:
            stdout.print_json(json.dumps([entry.manifest.model_dump(mode="json") for entry in entries]))
            return EXIT_OK
        table = Table("version", "sha256", "promoted", "approver", "note")
        for entry in entries:
            manifest = entry.manifest
            approval = manifest.approval
            approver = approval.approver + (f" (policy: {approval.policy})" if approval.policy else "")
            table.add_row(
                f"v{manifest.version}", manifest.code_sha256[:12], manifest.promoted_at, approver, approval.note or ""
            )
        stdout.print(table)
        latest = entries[-1]
        source = latest.path.read_text(encoding="utf-8")
        stdout.print(_syntax(source, "python", line_numbers=True))
        shown = code_sha256(source)
        if shown != latest.manifest.code_sha256:  # the code above is not what was approved: say so, under it
            stderr.print(
                f"warning: {latest.path} was changed after it was approved (sha256 {shown[:12]}, approved "
                f"{latest.manifest.code_sha256[:12]}): the code shown is not the approved code, and score refuses it"
            )
        return EXIT_OK
    builtins = list_builtin_metrics()
    promoted = list_library(library)
    if args.json:
        rows = [_spec_summary(spec) | {"source": "builtin"} for spec in builtins]
        rows += [
            {
                "name": entry.manifest.name,
                "level": entry.manifest.level,
                "suspicious": entry.manifest.suspicious,
                "description": entry.manifest.description,
                "source": "library",
                "version": entry.manifest.version,
                "changed_since_approval": _changed(entry),
            }
            for entry in promoted
        ]
        stdout.print_json(json.dumps(rows))
        return EXIT_OK
    table = Table("name", "source", "level", "suspicious", "description")
    for spec in builtins:
        table.add_row(spec.name, "builtin", spec.level, spec.suspicious, spec.description.strip().splitlines()[0])
    for entry in promoted:
        manifest = entry.manifest
        table.add_row(
            manifest.name,
            # A file changed since its approval is refused by score: the list says so rather than offer it.
            f"lib v{manifest.version}" + (" (changed since approval: refused)" if _changed(entry) else ""),
            manifest.level,
            manifest.suspicious,
            manifest.description.strip().splitlines()[0],
        )
    stdout.print(table)
    return EXIT_OK


def _changed(entry: LibraryEntry) -> bool:
    """Whether the entry's metric.py is no longer the code its approval is bound to."""
    return code_sha256(entry.path.read_text(encoding="utf-8")) != entry.manifest.code_sha256


def _syntax(code: str, lexer: str, **options: Any) -> Any:
    """Highlighted code; rich's Syntax brings in pygments, so only `library show` pays for it."""
    from rich.syntax import Syntax

    return Syntax(code, lexer, **options)


def _spec_summary(spec: MetricSpec) -> dict:
    return {"name": spec.name, "level": spec.level, "suspicious": spec.suspicious, "description": spec.description}
