"""``ast3stream simulate``: write a simulated night."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register the ``simulate`` subcommand on the main CLI's ``subparsers``."""
    p = subparsers.add_parser("simulate", help="write a simulated AST3-3 night (raw frames, calibrations, truth)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--exposures", type=int, default=6)
    p.add_argument("--scale", type=float, default=0.1, help="detector size relative to AST3-3 (pixel scale kept)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fields", type=int, default=2)
    p.add_argument("--cloud-fraction", type=float, default=0.0)
    p.add_argument("--too", type=int, nargs="*", default=[], metavar="FIELD", help="field ids observed as ToO")
    p.add_argument("--plan-only", action="store_true", help="write catalogues, calibrations and truth, no frames")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, cfg=None) -> int:
    from . import simulate_night

    night = simulate_night(args.out, args.exposures, args.scale, args.seed, cfg, args.fields,
                           args.cloud_fraction, args.too, frames=not args.plan_only)
    for e in night.exposures:
        print(f"{e.expid}  field {e.field_id}  MJD {e.mjd:.5f}{'  ToO' if e.too else ''}  {e.path}")
    return 0
