"""`metricsmith demo-data`: a procedural COCO dataset with known label errors."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.console import EXIT_OK, positive_int, stderr
from agent.data.demo import generate_demo_dataset

__all__ = ["cmd_demo_data", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo-data", help=cmd_demo_data.__doc__, description=cmd_demo_data.__doc__)
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--images", type=positive_int, default=64)
    demo.add_argument("--seed", type=int, default=0)
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
    path = generate_demo_dataset(args.out_dir, n_images=args.images, seed=args.seed, error_rate=args.error_rate)
    stderr.print(f"wrote {args.images} images and {path}")
    return EXIT_OK
