"""``ast3stream too ...``: GW notices in, the ToO list, the night's plan, coverage, the GCN bridge.

``ingest FILE``   read an LVK notice (JSON or VOEvent) into the database; a notice given by hand
                  is followed even where the stream's policy would not (``--policy`` applies it)
``events``        the GW events known, their status and notices
``plan``          per active event: the observable schedule for a night at the site (JSON, CSV, PNG)
``coverage``      per active event: probability covered by processed exposures, by depth, and the
                  candidates inside the credible region ranked for kilonova likeness (JSON, PNG)
``bridge``        GCN Kafka -> ``{prefix}.gw`` (runs until interrupted)
"""
from __future__ import annotations

import sys
from pathlib import Path

from astropy.table import Table
from astropy.time import Time

SHOWN = ("rank", "field_id", "ra", "dec", "prob", "cum_prob", "galaxy_score")
PLAN_SHOWN = ("order", "field_id", "visit", "start", "ra", "dec", "alt_deg", "airmass", "moon_sep_deg", "prob",
              "galaxy_score", "cum_prob")


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("too", help="gravitational-wave Target-of-Opportunity follow-up")
    sub = parser.add_subparsers(dest="too_command", required=True)

    p = sub.add_parser("ingest", help="read an LVK notice (JSON or VOEvent) and update the event's ToO fields")
    p.add_argument("file", type=Path)
    p.add_argument("--policy", action="store_true", help="apply the stream's notice policy (default: follow it)")
    p.add_argument("--fields", type=Path, help="survey grid CSV (field_id, ra, dec); default paths.fields, "
                   "written from the camera's default grid on first use")
    p.add_argument("--galaxies", type=Path, help="GLADE+-like CSV; default paths.galaxies if it exists")
    p.add_argument("--skymap-dir", type=Path, help="folder where a VOEvent's sky-map file is found by name; "
                   "default gw.skymap_dir, else the notice's folder")
    p.add_argument("--plot", type=Path, help="also write the ranked fields' PNG here")
    p.set_defaults(func=ingest_command)

    p = sub.add_parser("events", help="the GW events and notices received")
    p.set_defaults(func=events_command)

    p = sub.add_parser("plan", help="observable schedule of the active events' fields for a night at the site")
    p.add_argument("--event", help="only this superevent")
    p.add_argument("--site", help="site preset (yaoan) or 'detector'; default gw.plan.site")
    p.add_argument("--night", help="local evening date YYYY-MM-DD; default the coming (or current) night")
    p.add_argument("--out", type=Path, help="folder for plan JSON/CSV/PNG; default <products>/gw/<event>")
    p.set_defaults(func=plan_command)

    p = sub.add_parser("coverage", help="probability covered by processed exposures, by depth; candidates")
    p.add_argument("--event", help="only this superevent")
    p.add_argument("--out", type=Path, help="folder for coverage JSON/PNG; default <products>/gw/<event>")
    p.set_defaults(func=coverage_command)

    p = sub.add_parser("bridge", help="GCN Kafka (gw.gcn) -> {prefix}.gw on kafka.bootstrap, until interrupted")
    p.set_defaults(func=bridge_command)


def _context(args):
    from agents.db import Database
    from ast3stream.cli import _settings

    cfg = _settings(args)
    return cfg, Database.from_settings(cfg)


def ingest_command(args) -> int:
    from agents.gw import ingest
    from ast3stream.gw.notices import BadNotice
    from ast3stream.gw.plot import plot_plan

    cfg, db = _context(args)
    fields = Table.read(args.fields, format="ascii.csv", converters={"field_id": str}) if args.fields else None
    galaxies = Table.read(args.galaxies, format="ascii.csv") if args.galaxies else None
    try:
        out = ingest(args.file, db, cfg, origin=str(args.file), enforce_policy=args.policy, fields=fields,
                     galaxies=galaxies, skymap_dir=args.skymap_dir)
    except (OSError, BadNotice, ValueError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    n = out.notice
    print(f"{n.superevent_id} {n.alert_type}: {out.action} ({out.decision.reason})")
    if out.fields is not None:
        t = out.fields
        print(f"{len(t)} ToO fields, cumulative probability {t['cum_prob'][-1] if len(t) else 0:.3f}")
        _print(t, SHOWN)
        if args.plot:
            plot_plan(t, args.plot, n.skymap, title=f"{n.superevent_id} {n.alert_type}")
    return 0


def events_command(args) -> int:
    from agents.gw import GWState

    _, db = _context(args)
    state = GWState(db)
    events = state.events()
    if not events:
        print("no GW events", file=sys.stderr)
        return 1
    for e in events:
        far = "" if e["far_per_year"] is None else f" FAR {e['far_per_year']:.3g}/yr"
        area = "" if e["area90_deg2"] is None else f" 90% {e['area90_deg2']:.0f} deg2"
        print(f"{e['event_id']} {e['status']} ({e['alert_type']}){far}{area}: {e['n_fields'] or 0} fields, "
              f"P = {e['cum_prob'] or 0:.3f}; {e['reason']}")
        for n in state.notices(e["event_id"]):
            print(f"    {Time(n['received_at'], format='unix').isot[:19]} {n['alert_type']:<12} {n['action']:<10} "
                  f"{n['origin']}: {n['reason']}")
    return 0


def _events(state, event: str | None) -> list[dict]:
    return [e for e in state.events("active") if event in (None, e["event_id"])]


def plan_command(args) -> int:
    from agents.gw import GWState, night_of, write_plan
    from ast3stream.gw.observe import night_window, site

    cfg, db = _context(args)
    plan = cfg.gw.plan
    state = GWState(db)
    state.expire()
    events = _events(state, args.event)
    if not events:
        print("no active GW events with ToO fields", file=sys.stderr)
        return 1
    where = site(args.site or plan.site, cfg.detector)
    night = args.night or night_of(where)
    start, end = night_window(where, night, plan.sun_alt_deg)
    print(f"{where.name} (lat {where.lat:.2f}, lon {where.lon:.2f}, {where.height:.0f} m): night of {night}, "
          f"sun below {plan.sun_alt_deg:g} deg from {start.isot[:16]} to {end.isot[:16]} UTC; altitude >= "
          f"{plan.min_alt_deg:g} deg, airmass <= {plan.max_airmass:g}, {plan.revisits} visits of {plan.exptime_s:g} s")
    for ev in events:
        sched, stem = write_plan(db, cfg, ev, where, night, args.out)
        n_fields = len(set(sched["field_id"])) if len(sched) else 0
        print(f"\n{ev['event_id']} ({ev['alert_type']}): {len(sched)} visits of {n_fields} of its "
              f"{sched.meta['n_candidates']} fields, cumulative probability "
              f"{sched['cum_prob'][-1] if len(sched) else 0:.3f}")
        _print(sched, PLAN_SHOWN)
        print(f"schedule: {stem}.json, {stem}.csv; plot: {stem}.png")
    return 0


def coverage_command(args) -> int:
    from agents.gw import GWState, write_coverage
    from ast3stream.gw.coverage import summary

    cfg, db = _context(args)
    state = GWState(db)
    events = _events(state, args.event)
    if not events:
        print("no active GW events", file=sys.stderr)
        return 1
    for ev in events:
        made = write_coverage(db, cfg, ev, args.out)
        if made is None:
            print(f"{ev['event_id']}: no stored sky map", file=sys.stderr)
            continue
        report, path = made
        print(summary(report))
        print(f"report: {path}; plot: {path.with_suffix('.png')}")
    return 0


def bridge_command(args) -> int:
    import asyncio

    from agents.gcn_bridge import bridge
    from ast3stream.cli import _settings

    cfg = _settings(args)
    if not cfg.kafka.bootstrap:
        print("error: the bridge needs kafka.bootstrap (our broker)", file=sys.stderr)
        return 2
    try:
        asyncio.run(bridge(cfg.gw.gcn, cfg.kafka.bootstrap, cfg.kafka.prefix))
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _print(table: Table, shown) -> None:
    cols = [c for c in shown if c in table.colnames]
    out = table[cols]
    for c in ("ra", "dec", "prob", "cum_prob", "galaxy_score", "alt_deg", "airmass", "moon_sep_deg"):
        if c in cols:
            out[c].info.format = ".4f" if c in ("prob", "cum_prob", "galaxy_score") else ".2f"
    if "start" in cols:
        out["start"] = [s[:19] for s in out["start"]]
    print("\n".join(out.pformat(max_lines=-1, max_width=-1)))
