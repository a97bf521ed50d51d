"""`metricsmith demo-data`: a procedural COCO dataset with known label errors."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from agent.cli.console import EXIT_OK, non_negative_int, positive_int, stderr
from agent.data.demo import generate_demo_dataset
from agent.errors import UserError

__all__ = ["cmd_demo_data", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo-data", help=cmd_demo_data.__doc__, description=cmd_demo_data.__doc__)
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--images", type=positive_int, default=64)
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument(
        "--error-rate",
        type=float,
        default=0.2,
        help="share of labels given a known error (default 0.2; see errors.json)",
    )
    demo.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(handler=cmd_demo_data)


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Generate a small procedural COCO dataset (pandas, bears, foxes) to try metricsmith on."""
    _check_room(args.out_dir, args.images)
    path = generate_demo_dataset(args.out_dir, n_images=args.images, seed=args.seed, error_rate=args.error_rate)
    stderr.print(f"wrote {args.images} images and {path}")
    return EXIT_OK


# A demo image is a 640x480 JPEG of about 55 KB; a little more, so that a set that fits is never refused.
_BYTES_PER_IMAGE = 64 * 1024


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def _check_room(out_dir: Path, images: int) -> None:
    """Refuse, before writing anything, a set larger than the free space where it would go."""
    existing = out_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return  # nothing to measure: the writes will say what is wrong
    needed = images * _BYTES_PER_IMAGE
    if needed > free:
        raise UserError(f"{images} demo images need about {_size(needed)}, and {existing} has {_size(free)} free")
