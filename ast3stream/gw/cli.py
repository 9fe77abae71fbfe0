"""``ast3stream too ingest FILE`` and ``ast3stream too plan``: the ToO field list in the database."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.table import Table

from ast3stream.gw.notices import BadNotice
from ast3stream.gw.plot import plot_plan
from ast3stream.gw.too import ingest

SHOWN = ("rank", "field_id", "ra", "dec", "prob", "cum_prob", "galaxy_score")


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("too", help="gravitational-wave Target-of-Opportunity field lists")
    sub = parser.add_subparsers(dest="too_command", required=True)

    p = sub.add_parser("ingest", help="read an LVK notice (JSON or VOEvent); store or retract its ranked fields")
    p.add_argument("file", type=Path)
    p.add_argument("--fields", type=Path, help="survey grid CSV (field_id, ra, dec); default paths.fields")
    p.add_argument("--galaxies", type=Path, help="GLADE+-like CSV; default paths.galaxies if it exists")
    p.add_argument("--skymap-dir", type=Path, help="folder where a VOEvent's sky-map file is found by name; default gw.skymap_dir, "
                   "else the notice's folder")
    p.add_argument("--plot", type=Path, help="also write the plan PNG here")
    p.set_defaults(func=ingest_command)

    p = sub.add_parser("plan", help="print and plot the active ToO fields with cumulative probability")
    p.add_argument("--event", help="only this superevent")
    p.add_argument("--fields", type=Path, help="survey grid CSV for the positions; default paths.fields")
    p.add_argument("--out", type=Path, help="PNG; default <products>/too_plan_<event>.png")
    p.set_defaults(func=plan_command)


def ingest_command(args) -> int:
    from ast3stream.cli import _settings
    from agents.db import Database

    cfg = _settings(args)
    fields = Table.read(args.fields, format="ascii.csv") if args.fields else None
    galaxies = Table.read(args.galaxies, format="ascii.csv") if args.galaxies else None
    try:
        notice, table = ingest(args.file, Database.from_settings(cfg), cfg, fields, galaxies, args.skymap_dir)
    except (OSError, BadNotice) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    if table is None:
        print(f"{notice.superevent_id}: RETRACTION, its ToO fields are removed")
        return 0
    n = len(table)
    print(f"{notice.superevent_id} {notice.alert_type}: {n} fields, "
          f"cumulative probability {table['cum_prob'][-1] if n else 0:.3f}")
    _print(table)
    if args.plot:
        plot_plan(table, args.plot, notice.skymap, title=f"{notice.superevent_id} {notice.alert_type}")
    return 0


def plan_command(args) -> int:
    from ast3stream.cli import _settings
    from agents.db import Database

    cfg = _settings(args)
    rows = [r for r in Database.from_settings(cfg).too_fields() if args.event in (None, r["event_id"])]
    if not rows:
        print("no active ToO fields", file=sys.stderr)
        return 1
    events = sorted({r["event_id"] for r in rows})
    for event in events:
        table = Table([r for r in rows if r["event_id"] == event])
        table["galaxy_score"] = [np.nan if s is None else s for s in table["galaxy_score"]]
        fields_path = args.fields or cfg.fields_path
        if Path(fields_path).exists():
            grid = Table.read(fields_path, format="ascii.csv")
            pos = {str(f): (ra, dec) for f, ra, dec in zip(grid["field_id"], grid["ra"], grid["dec"])}
            table["ra"] = [pos.get(str(f), (np.nan, np.nan))[0] for f in table["field_id"]]
            table["dec"] = [pos.get(str(f), (np.nan, np.nan))[1] for f in table["field_id"]]
        print(f"{event}: {len(table)} fields, cumulative probability {max(table['cum_prob']):.3f}")
        _print(table)
        out = args.out if args.out and len(events) == 1 else cfg.products_dir / f"too_plan_{event}.png"
        print(f"plot: {plot_plan(table, out, title=event)}")
    return 0


def _print(table: Table) -> None:
    cols = [c for c in SHOWN if c in table.colnames]
    out = table[cols]
    for c in ("ra", "dec", "prob", "cum_prob", "galaxy_score"):
        if c in cols:
            out[c].info.format = ".4f"
    print("\n".join(out.pformat(max_lines=-1, max_width=-1)))
