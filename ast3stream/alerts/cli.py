"""``ast3stream alerts listen`` (subscribe to the stream), ``alerts show`` (local Avro files) and
``ast3stream filters add/list/remove/serve`` (server-side filter streams)."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ast3stream.alerts.filters import AlertFilter
from ast3stream.alerts.output import table_header, table_row, to_json, write_files
from ast3stream.alerts.reader import read_alerts


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("alerts", help="subscribe to alerts, or show alert files")
    sub = parser.add_subparsers(dest="alerts_command", required=True)

    p = sub.add_parser("listen", help="consume alert topics, filter, print or write files")
    p.add_argument("--topic", action="append", help="topic name (repeatable); default <prefix>.alerts")
    p.add_argument("--stream", action="append", metavar="FILTER",
                   help="a server-side filter stream (`ast3stream filters add`): its per-lane topics")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers; default kafka.bootstrap")
    p.add_argument("--from-beginning", action="store_true", help="start at the earliest offset")
    p.add_argument("--group", help="consumer group; offsets are committed so a restart resumes")
    _filter_arguments(p)
    p.add_argument("--max", type=int, help="stop after this many alerts")
    p.add_argument("--timeout", type=float, help="stop after this many seconds without a message")
    p.set_defaults(func=listen_command)

    p = sub.add_parser("show", help="read Avro alert files (ours, ZTF, PGIR, WINTER) through the filters")
    p.add_argument("path", type=Path, help="an .avro file or a folder of them")
    _filter_arguments(p)
    p.add_argument("--max", type=int)
    p.set_defaults(func=show_command)


    parser = subparsers.add_parser("filters", help="server-side filter streams: add, list, remove, serve")
    sub = parser.add_subparsers(dest="filters_command", required=True)
    p = sub.add_parser("add", help="store a filter; its alerts go to <prefix>.filter.NAME.<lane>")
    p.add_argument("name")
    p.add_argument("--expr", help="e.g. \"score >= 0.8 and not asteroid\" (see ast3stream.alerts.filters.Expression)")
    p.add_argument("--watchlist", type=Path, help="CSV of ra,dec,radius_arcsec (deg, deg, arcsec), no header")
    p.add_argument("--skymap", type=Path, help="a HEALPix sky map (e.g. a GW map): keep alerts in its credible region")
    p.add_argument("--credible-level", type=float, default=0.9)
    p.add_argument("--lanes", default="qip,dip", help="comma-separated lanes (default both, one topic each)")
    p.add_argument("--description", default="")
    p.set_defaults(func=filters_command)
    for name, text in (("list", "the filters in force"), ("remove", "remove a filter"),
                       ("serve", "run the filter streams (a worker does this too)")):
        p = sub.add_parser(name, help=text)
        if name == "remove":
            p.add_argument("name")
        if name == "serve":
            p.add_argument("--timeout", type=float, help="stop after this many seconds without an alert")
        p.set_defaults(func=filters_command)
    for p in sub.choices.values():
        p.add_argument("--bootstrap", help="Kafka bootstrap servers; default kafka.bootstrap")


def filters_command(args) -> int:
    import json

    from agents import filterstream
    from agents.security import kafka_options, registry
    from agents.topics import filter_topic
    from ast3stream.alerts.filters import FilterError, FilterSpec, credible_region_moc
    from ast3stream.cli import _settings

    cfg = _settings(args)
    if not cfg.kafka.bootstrap:
        print(f"filters {args.filters_command} needs a broker: --bootstrap HOST:PORT or kafka.bootstrap", file=sys.stderr)
        return 2
    opts = kafka_options(cfg.security)
    if args.filters_command == "add":
        try:
            watchlist = [tuple(float(x) for x in line.split(",")[:3])
                         for line in (args.watchlist.read_text().splitlines() if args.watchlist else ()) if line.strip()]
            moc = []
            if args.skymap:
                from ast3stream.gw.skymap import read_skymap

                moc = credible_region_moc(read_skymap(args.skymap), args.credible_level)
            spec = FilterSpec(args.name, expr=args.expr, watchlist=watchlist, moc=moc,
                              lanes=args.lanes.split(","), description=args.description)
        except (FilterError, ValueError) as exc:
            print(f"filters add: {exc}", file=sys.stderr)
            return 2
        asyncio.run(filterstream.put_filter(cfg.kafka, spec, opts))
        print(f"{spec.name}: {', '.join(filter_topic(cfg.kafka.prefix, spec.name, lane) for lane in spec.lanes)}")
    elif args.filters_command == "list":
        for spec in asyncio.run(filterstream.list_filters(cfg.kafka, opts)).values():
            print(json.dumps({"name": spec.name, "expr": spec.expr, "watchlist": len(spec.watchlist),
                              "moc_cells": len(spec.moc), "lanes": spec.lanes, "description": spec.description}))
    elif args.filters_command == "remove":
        asyncio.run(filterstream.remove_filter(cfg.kafka, args.name, opts))
    else:
        stream = filterstream.FilterStream(cfg.kafka, registry=registry(cfg.alerts, cfg.security), client_options=opts)
        print(json.dumps(asyncio.run(stream.run(args.timeout))))
    return 0


def _filter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-score", type=float, help="real/bogus score at least this")
    p.add_argument("--max-mag", type=float, help="magnitude at most this (brighter)")
    p.add_argument("--has-host", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--in-gw-field", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--not-asteroid", action="store_const", const=True, default=None)
    p.add_argument("--format", choices=["table", "json", "files"], default="table")
    p.add_argument("--out", type=Path, default=Path("alerts"), help="folder for --format files")


def _filter(args) -> AlertFilter:
    return AlertFilter(min_score=args.min_score, max_mag=args.max_mag, has_host=args.has_host,
                       in_gw_field=args.in_gw_field, not_asteroid=args.not_asteroid)


def listen_command(args) -> int:
    from agents.listen import listen
    from agents.security import kafka_options, registry
    from agents.topics import filter_topic, topic
    from ast3stream.cli import _settings

    cfg = _settings(args)
    if not cfg.kafka.bootstrap:
        print("alerts listen needs a broker: --bootstrap HOST:PORT or kafka.bootstrap", file=sys.stderr)
        return 2
    streams = [filter_topic(cfg.kafka.prefix, name, lane) for name in args.stream or () for lane in ("qip", "dip")]
    topics = [*(args.topic or ()), *streams] or [topic(cfg.kafka.prefix, "alerts")]
    asyncio.run(listen(cfg.kafka.bootstrap, topics, alert_filter=_filter(args), fmt=args.format, out=args.out,
                       max_alerts=args.max, group=args.group, from_beginning=args.from_beginning,
                       timeout_s=args.timeout, session_timeout_ms=int(cfg.kafka.session_timeout_s * 1000),
                       heartbeat_interval_ms=int(cfg.kafka.heartbeat_s * 1000),
                       registry=registry(cfg.alerts, cfg.security), **kafka_options(cfg.security)))
    return 0


def show_command(args) -> int:
    keep = _filter(args)
    if args.format == "table":
        print(table_header())
    shown = 0
    for v in read_alerts(args.path):
        if args.max is not None and shown >= args.max:
            break
        if not keep(v):
            continue
        if args.format == "table":
            print(table_row(v))
        elif args.format == "json":
            print(to_json(v.record))
        else:
            print(write_files(v.record, args.out)[0])
        shown += 1
    return 0
