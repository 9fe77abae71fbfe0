"""The ``ast3stream`` command.

Stream commands (``run``, ``demo``, ``worker``, ``status``, ``replay``, ``alerts listen``)
start or talk to the broker; every science command works on files with no broker.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .config import Settings

# subcommands contributed by the science packages: each module has add_cli(subparsers). A module is
# imported only when its command runs (or for the full parser), so the light install (no
# ``[pipeline]`` extra) runs ``alerts``/``filters`` without astropy, torch or faust.
_PLUGINS = {"simulate": ("ast3stream.simulate.cli", "write a simulated AST3-3 night"),
            "reduce": ("ast3stream.front", "reduce and calibrate one raw frame"),
            "classify": ("ast3stream.classify.cli", "real/bogus and cloud classifiers"),
            "too": ("ast3stream.gw.cli", "gravitational-wave Target-of-Opportunity field lists"),
            "alerts": ("ast3stream.alerts.cli", "subscribe to alerts, or show alert files"),
            "filters": ("ast3stream.alerts.cli", "server-side filter streams: add, list, remove"),
            "subtract": ("ast3stream.subtraction.pair", "align and subtract any pair of FITS images")}


def _settings(args) -> Settings:
    overrides: dict = {}
    if getattr(args, "data_dir", None):
        overrides["paths"] = {"data_dir": args.data_dir}
    if getattr(args, "bootstrap", None):
        overrides["kafka"] = {"bootstrap": args.bootstrap}
    return Settings.load(getattr(args, "config", None), **overrides)


def cmd_run(args) -> int:
    import signal
    import threading

    from agents.portal import in_background
    from agents.runner import Stack

    cfg = _settings(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # what systemd, docker and Ctrl-C send
        signal.signal(sig, lambda *_: stop.set())
    with Stack(cfg, workers=args.workers) as stack, in_background(cfg) as portal:
        resumed = f"; resumed {len(stack.resumed)} unfinished exposures" if stack.resumed else ""
        print(f"broker {cfg.kafka.bootstrap}; watching {cfg.watch_dir}; portal {portal or 'off'}{resumed}; "
              "Ctrl-C to stop", flush=True)
        stack.supervise(stop, progress=lambda line: print(line, flush=True))
        print("stopping", flush=True)
    return 0


def cmd_demo(args) -> int:
    from agents.demo import DEFAULT_FOLDER, reset_folder, run_demo
    from agents.portal import in_background

    cfg = _settings(args)
    if "data_dir" not in cfg.paths.model_fields_set:   # neither --data-dir nor the settings name one
        cfg.paths.data_dir = DEFAULT_FOLDER
    reset_folder(cfg)   # before the portal opens the folder's database
    with in_background(cfg) as portal:
        if portal:
            print(f"portal {portal}", flush=True)
        result = run_demo(cfg, exposures=args.exposures, scale=args.scale, seed=args.seed, n_fields=args.fields,
                          interval=args.interval, timeout=args.timeout, summary=args.summary,
                          cloud_fraction=args.cloud_fraction, too_fields=tuple(args.too or ()))
    return 0 if not result.get("unfinished") else 1


def cmd_worker(args) -> int:
    from agents.app import main

    main(args.rest)
    return 0


def cmd_process(args) -> int:
    from agents.chain import Resources, process_exposure

    from .alerts import decode, write_avro_file

    cfg = _settings(args)
    if args.calib:
        cfg.paths.calib_dir = Path(args.calib)
    if args.refcat:
        cfg.paths.refcat = Path(args.refcat)
    messages = process_exposure(args.raw, Resources(cfg))
    alerts = [decode(value) for name, _, value in messages if name == "alerts"]
    out = Path(args.out or cfg.products_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = write_avro_file(alerts, out / f"{Path(args.raw).name.split('.')[0]}.alerts.avro")
    print(json.dumps({"alerts": len(alerts), "file": str(path)}))
    return 0


def cmd_status(args) -> int:
    from agents.db import Database

    cfg = _settings(args)
    db = Database.from_settings(cfg)
    if cfg.kafka.bootstrap:
        import asyncio

        from agents.status import topic_lag

        for name, lag in asyncio.run(topic_lag(cfg)).items():
            print(f"{name:<40} lag {lag}")
    runs = db.recent_stage_timings(args.limit)
    by_stage: dict[tuple, list[float]] = {}
    for r in runs:
        if r["end"] is None:  # deferred, not run yet
            continue
        by_stage.setdefault((r["stage"], r["lane"]), []).append((r["end"] or 0) - (r["start"] or 0))
    print(f"{'stage':<14}{'lane':<6}{'n':>5}{'median s':>10}{'max s':>9}")
    for (stage, lane), secs in sorted(by_stage.items()):
        secs.sort()
        print(f"{stage:<14}{lane:<6}{len(secs):>5}{secs[len(secs) // 2]:>10.2f}{secs[-1]:>9.2f}")
    for r in db.rows("exposures")[-args.limit:]:
        print(f"{r['exposure_id']:<36} {r['status']:<12} {','.join(r['flags'] or [])}")
    from agents.store import ProductStore

    ns = db.namespace or "live"
    print(f"products ({ns}): {ProductStore.open(cfg.products_dir).disk_use(ns) / 1e6:.1f} MB; "
          f"dead letters {db.count('dead_letters')}; copies not published {db.count('files', kind='duplicate')}; "
          f"rejected files {db.count('files', kind='rejected')}")
    return 0


def cmd_template(args) -> int:
    from agents.chain import Resources
    from agents.templates import set_template, stack_template

    cfg = _settings(args)
    res = Resources(cfg)
    db = res.db
    if args.action == "list":
        for r in db.rows("templates"):
            print(f"{r['field_id']:<12} {r['lane']:<4} {r['exposure_id']:<36} maglim={r['maglim']} pcc={r['pcc']} {r['path']}")
    elif args.action == "set":
        exp = db.rows("exposures", exposure_id=args.exposure)
        if not exp:
            print(f"unknown exposure {args.exposure}", file=sys.stderr)
            return 2
        set_template(res, args.exposure)
    elif args.action == "rebuild" and args.stack:
        row = stack_template(res, args.field, args.stack)
        print(f"{row['field_id']} template {row['exposure_id']} maglim={row['maglim']}")
    elif args.action == "rebuild":
        rows = db.rows("templates", field_id=args.field, lane="dip")
        if not rows:
            print(f"no template for field {args.field}", file=sys.stderr)
            return 2
        set_template(res, rows[0]["exposure_id"])
    return 0


def cmd_products(args) -> int:
    from agents.db import Database
    from agents.store import ProductStore

    cfg = _settings(args)
    days = cfg.products.retention_days if args.older_than_days is None else args.older_than_days
    store = ProductStore.open(cfg.products_dir)
    n = store.prune(Database.from_settings(cfg), days)
    print(f"removed {n} product files older than {days} days; {store.disk_use() / 1e6:.1f} MB left")
    return 0


def cmd_topics(args) -> int:
    from agents.broker import ensure_topics_sync
    from agents.security import kafka_options
    from agents.topics import DAY_MS, topic_configs

    cfg = _settings(args)
    k = cfg.kafka
    configs = topic_configs(k)
    created = set()
    if args.action == "create":
        if not k.bootstrap:
            print("topics create needs a broker: --bootstrap or AST3_KAFKA__BOOTSTRAP", file=sys.stderr)
            return 2
        created = set(ensure_topics_sync(k.bootstrap, configs, k.partitions, k.replication,
                                         kafka_options(cfg.security)))
    for name, c in configs.items():
        state = "" if args.action == "plan" else ("created" if name in created else "exists")
        print(f"{name:<32} partitions={k.partitions} replication={k.replication} "
              f"retention={int(c['retention.ms']) / DAY_MS:g}d {state}".rstrip())
    return 0


def cmd_portal(args) -> int:
    from agents.portal import bind, serve, url

    cfg = _settings(args)
    if args.namespace is not None:
        cfg.database.namespace = args.namespace
    cfg.portal.host = args.host or cfg.portal.host
    cfg.portal.port = cfg.portal.port if args.port is None else args.port
    try:
        sock = bind(cfg)
    except OSError as exc:
        print(f"portal: cannot listen on {cfg.portal.host}:{cfg.portal.port}: {exc}", file=sys.stderr)
        return 2
    print(f"portal {url(sock)} ({'operator actions need the token' if cfg.portal.token else 'read-only'}); "
          "Ctrl-C to stop", flush=True)
    serve(cfg).run(sockets=[sock])
    return 0


def cmd_replay(args) -> int:
    from agents.replay import main as replay_main

    return replay_main(args, _settings(args))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, the plugin modules of other commands are not imported."""
    parser = argparse.ArgumentParser(prog="ast3stream", description="Real-time transient detection pipeline")
    parser.add_argument("--config", help="settings file (TOML or JSON); also $AST3_CONFIG")
    parser.add_argument("--data-dir", help="working folder (database, products, watched folder)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="embedded broker + all agents + watcher, until Ctrl-C")
    p.add_argument("--bootstrap", help="use this Kafka instead of the embedded broker")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (a GPU holds two full-size ones; topics get a partition each)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="simulate a night and play it through the running stack")
    p.add_argument("--exposures", type=int, default=6)
    p.add_argument("--scale", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fields", type=int, default=2)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between exposures")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--cloud-fraction", type=float, default=0.0)
    p.add_argument("--too", nargs="*", help="field ids flagged as ToO")
    p.add_argument("--summary", type=Path)
    p.add_argument("--bootstrap")
    p.set_defaults(func=cmd_demo)

    # prefix_chars: every argument after `worker`, options included, goes on to agents.app
    p = sub.add_parser("worker", help="one faust worker (see agents.app --help)", add_help=False, prefix_chars="+")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("process", help="one raw exposure through every stage, no broker")
    p.add_argument("raw")
    p.add_argument("--calib")
    p.add_argument("--refcat")
    p.add_argument("--out")
    p.set_defaults(func=cmd_process)

    p = sub.add_parser("status", help="lag per topic, recent per-stage timings")
    p.add_argument("--bootstrap")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("template", help="list, set or rebuild field templates")
    p.add_argument("action", choices=["list", "set", "rebuild"])
    p.add_argument("--exposure", help="exposure id (set)")
    p.add_argument("--field", help="field id (rebuild)")
    p.add_argument("--stack", type=int, metavar="N",
                   help="rebuild: co-add the field's N best acceptable epochs (>= 2) as its template")
    p.set_defaults(func=cmd_template)

    p = sub.add_parser("products", help="prune intermediate product files (retention)")
    p.add_argument("action", choices=["prune"])
    p.add_argument("--older-than-days", type=float)
    p.set_defaults(func=cmd_products)

    p = sub.add_parser("topics", help="create every topic with its partitions and retention (site set-up)")
    p.add_argument("action", choices=["create", "plan"], help="plan: print what create would make, no broker")
    p.add_argument("--bootstrap")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("portal", help="the web portal alone, over a data folder (and namespace)")
    p.add_argument("--namespace", help="database namespace, e.g. a replay's; default database.namespace")
    p.add_argument("--host", help="default portal.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="default portal.port (8600); 0 = any free port")
    p.add_argument("--bootstrap", help="the broker, for retrying dead letters")
    p.set_defaults(func=cmd_portal)

    p = sub.add_parser("replay", help="re-run stages over stored exposure events into a new namespace")
    p.add_argument("--namespace", required=True, help="new, versioned namespace, e.g. rb-2")
    p.add_argument("--bootstrap")
    p.add_argument("--night", help="YYYYMMDD: exposures of this night")
    p.add_argument("--field", help="only this field")
    p.add_argument("--from-offset", type=int, default=0)
    p.add_argument("--to-offset", type=int)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting for the replay, e.g. classify.version=2")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--force", action="store_true", help="replay into a namespace that holds one already: "
                   "delete its tables and products first")
    p.set_defaults(func=cmd_replay)

    added: set[str] = set()
    for name, (module_name, help_text) in _PLUGINS.items():
        if only is not None and module_name != _PLUGINS[only][0]:
            sub.add_parser(name, help=help_text, add_help=False)   # listed in --help, imported on use
        elif module_name not in added:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.startswith("ast3stream"):
                    continue
                if only is not None:
                    raise SystemExit(f"ast3stream {name} needs the pipeline extra (no module {exc.name!r}): "
                                     "pip install 'ast3stream[pipeline]'") from None
                sub.add_parser(name, help=f"{help_text} (needs the [pipeline] extra)", add_help=False)
                continue
            module.add_cli(sub)
            added.add(module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; any error is one line on stderr saying what to fix (``--debug``: the traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if args.debug or not exc.name or exc.name.startswith(("ast3stream", "agents")):
            raise
        print(f"error: ast3stream {args.command} needs the pipeline extra (no module {exc.name!r}): "
              "pip install 'ast3stream[pipeline]'", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    from .config import ConfigError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ConfigError, OSError)) or type(exc).__name__ in ("AlreadyRunning", "DatabaseUnavailable"):
        return text[:500]
    if type(exc).__module__.startswith(("aiokafka", "kafka")) or "Kafka" in type(exc).__name__:
        return f"broker unreachable or refusing ({type(exc).__name__}: {text[:300]}): check kafka.bootstrap / --bootstrap"
    return f"{type(exc).__name__}: {text[:500]}"


def _command(argv: list[str]) -> str | None:
    """The plugin command named in ``argv`` (skipping the global options), else None."""
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("--config", "--data-dir") and rest:
            rest.pop(0)
    return rest[0] if rest and rest[0] in _PLUGINS else None


if __name__ == "__main__":
    sys.exit(main())
