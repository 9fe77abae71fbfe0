"""``ast3stream alerts listen`` (subscribe to the stream) and ``alerts show`` (local Avro files)."""
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
    from agents.topics import topic
    from ast3stream.cli import _settings

    cfg = _settings(args)
    if not cfg.kafka.bootstrap:
        print("alerts listen needs a broker: --bootstrap HOST:PORT or kafka.bootstrap", file=sys.stderr)
        return 2
    topics = args.topic or [topic(cfg.kafka.prefix, "alerts")]
    asyncio.run(listen(cfg.kafka.bootstrap, topics, alert_filter=_filter(args), fmt=args.format, out=args.out,
                       max_alerts=args.max, group=args.group, from_beginning=args.from_beginning,
                       timeout_s=args.timeout, session_timeout_ms=int(cfg.kafka.session_timeout_s * 1000),
                       heartbeat_interval_ms=int(cfg.kafka.heartbeat_s * 1000)))
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
