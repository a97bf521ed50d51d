"""`metricsmith inject`: known label errors written into a copy of any COCO dataset."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

from agent.cli.console import EXIT_OK, non_negative_int, print_warnings, stderr
from agent.data.coco import coco_from_document, read_coco_json
from agent.data.inject import INJECT_TYPES, inject_errors
from agent.errors import UserError
from agent.metrics.results import check_output_folder

__all__ = ["cmd_inject", "register"]


def _types(text: str) -> list[str]:
    types = [part.strip() for part in text.split(",") if part.strip()]
    if not types:  # an empty list wrote a copy with no error in it
        raise argparse.ArgumentTypeError(f"name at least one error type, like {','.join(INJECT_TYPES[:2])}")
    return types


def register(commands: argparse._SubParsersAction) -> None:
    inject = commands.add_parser("inject", help=cmd_inject.__doc__, description=cmd_inject.__doc__)
    inject.add_argument("--annotations", required=True, type=Path, help="COCO JSON file (left as it is)")
    inject.add_argument("--images", type=Path, help="image folder (default: the JSON's folder or its images/)")
    inject.add_argument("--out", required=True, type=Path, help="a new folder for the noisy copy")
    inject.add_argument("--rate", type=float, default=0.2, help="share of boxes given an error (default 0.2)")
    inject.add_argument("--seed", type=non_negative_int, default=0)
    inject.add_argument(
        "--types", type=_types, default=list(INJECT_TYPES), help=f"comma-separated (default: {','.join(INJECT_TYPES)})"
    )
    inject.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    inject.set_defaults(handler=cmd_inject)


def cmd_inject(args: argparse.Namespace) -> int:
    """Write a copy of a COCO dataset with known label errors: annotations.json, errors.json, ids.json, images/.

    The images are never copied or written: OUT/images is a link to them. See agent/data/inject.py for
    what each error type does and why nothing but geometry or class tells an injected box apart.
    """
    document = read_coco_json(args.annotations)
    dataset = coco_from_document(document, args.annotations, args.images)  # every problem, before any writing
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"{args.out} exists and is not an empty folder: give --out a new folder")
    check_output_folder(args.out, folder=args.out)
    injection = inject_errors(document, rate=args.rate, seed=args.seed, types=args.types)
    print_warnings(args.annotations, dataset.warnings)  # once the input is known good: a refusal stays one line
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "annotations.json").write_text(json.dumps(injection.document), encoding="utf-8")
    (args.out / "errors.json").write_text(injection.errors.model_dump_json(indent=1) + "\n", encoding="utf-8")
    ids = {str(noisy): original for noisy, original in injection.id_map.items()}
    (args.out / "ids.json").write_text(json.dumps(ids) + "\n", encoding="utf-8")
    os.symlink(dataset.image_root, args.out / "images", target_is_directory=True)
    for note in injection.notes:
        stderr.print(f"note: {note}", markup=False)
    counts = Counter(record.type for record in injection.errors.errors)
    shown = ", ".join(f"{counts[t]} {t}" for t in INJECT_TYPES if counts[t]) or "no errors"
    stderr.print(f"wrote {args.out}/annotations.json with {shown} (seed {args.seed})", markup=False)
    stderr.print(
        f"measure metrics on it: metricsmith eval --annotations {args.out}/annotations.json "
        f"--errors {args.out}/errors.json --metric builtin:NAME",
        markup=False,
    )
    return EXIT_OK
