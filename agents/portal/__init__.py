"""The web portal: the night, candidates with their stamps, objects with light curves, ToO
events, dead letters and templates, over the database and the product store.

Server-rendered HTML (Starlette + Jinja2, every text escaped) with a JSON endpoint behind
every page (``/api/...``); pictures are PNGs drawn on the server (:mod:`.images`). Read-only
unless ``portal.token`` is set: operator actions (``POST``) need that token, as a form field
or an ``Authorization: Bearer`` header. ``ast3stream portal`` serves it alone (e.g. over a
replay namespace); ``run`` and ``demo`` serve it beside the stack (:func:`in_background`).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from aiokafka.errors import KafkaError
from astropy.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agents.chain import Resources
from ast3stream.config import Settings

from . import actions, data, images
from .data import BadRequest, CandidateQuery, NotFound

log = logging.getLogger("ast3stream.portal")
HERE = Path(__file__).parent


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _utc(seconds) -> str:
    if seconds is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def create_app(cfg: Settings, res: Resources | None = None) -> Starlette:
    """The portal over ``cfg``'s database (namespace ``database.namespace``) and product store."""
    res = res or Resources(cfg)
    db, store, pc = res.db, res.store, cfg.portal
    ns = db.namespace or "live"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["f"] = _fmt
    env.filters["utc"] = _utc
    env.filters["g"] = lambda v: "–" if v is None else f"{v:.3g}"
    env.globals.update(urlencode=urlencode, namespace=ns, operator=pc.token is not None, refresh_s=pc.refresh_s,
                       FRONT=data.FRONT_STAGES, BACK=data.BACK_STAGES)

    stamp_cache: dict[tuple[str, str], bytes] = {}  # stamps do not change once written
    plot_cache: dict[tuple[str, str], bytes] = {}
    originals: dict = {}  # dead-letter messages read from the topic, by (offset)

    def grid() -> dict[str, tuple[float, float]]:
        path = cfg.fields_path
        if not path.exists():
            return {}
        t = Table.read(path, format="ascii.csv")
        return {str(f): (float(r), float(d)) for f, r, d in zip(t["field_id"], t["ra"], t["dec"])}

    def bundle(exposure_id: str, lane: str) -> Path:
        return store.path(store.key(ns, exposure_id, lane, "bundle.fits"))

    def page(name: str, request: Request, status: int = 200, **context) -> HTMLResponse:
        html = env.get_template(name).render(request=request, message=request.query_params.get("msg"),
                                             error=request.query_params.get("err"), **context)
        return HTMLResponse(html, status_code=status)

    def endpoint(fn, template: str | None = None):
        """One function answers the page (``template``) and its JSON twin (``/api/...``)."""
        async def handler(request: Request):
            api = request.url.path.startswith("/api/") or template is None  # pictures, files: errors as JSON
            try:
                result = await fn(request) if asyncio.iscoroutinefunction(fn) else await asyncio.to_thread(fn, request)
            except BadRequest as exc:
                return _error(request, api, 400, str(exc))
            except NotFound as exc:
                return _error(request, api, 404, str(exc))
            if api:
                return result if isinstance(result, Response) else JSONResponse(result)
            return page(template, request, data=result)
        return handler

    def _error(request: Request, api: bool, status: int, reason: str):
        if api:
            return JSONResponse({"error": reason}, status_code=status)
        return page("error.html", request, status=status, status_code=status, reason=reason)

    # -- data -----------------------------------------------------------------------------
    def night_data(request: Request):
        return data.night(db, request.query_params.get("night") or None)

    def exposure_data(request: Request):
        out = data.exposure(db, request.path_params["exposure_id"])
        out["header"] = _header(out["path"])
        return out

    def candidates_data(request: Request):
        return data.candidates(db, CandidateQuery.from_params(request.query_params, pc.page_size))

    def candidate_data(request: Request):
        return data.candidate(db, request.path_params["candidate_id"])

    def object_data(request: Request):
        return data.obj(db, request.path_params["object_id"])

    def too_data(request: Request):
        return data.too(db, grid(), cfg.gw.credible_level)

    async def dead_data(request: Request):
        rows = await asyncio.to_thread(data.dead_letters, db)
        broker = cfg.kafka.bootstrap
        if broker:  # the original topic, partition and offset are on the dead-letter topic
            try:
                for row in rows:
                    found = await actions.original(cfg.kafka, row, originals)
                    row.update({k: found[k] for k in actions.SHOWN} if found else {})
            except (KafkaError, OSError) as exc:
                log.warning("portal: dead-letter topic unreadable: %s", exc)
                broker = None
        return {"dead_letters": rows, "broker": broker}

    def templates_data(request: Request):
        return {"fields": data.templates(db)}

    # -- pictures and downloads -----------------------------------------------------------
    def thumbnail(request: Request):
        eid = request.path_params["exposure_id"]
        for lane in ("dip", "qip"):
            path = store.path(store.key(ns, eid, lane, "thumbnail.png"))
            if path.exists():
                return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "max-age=600"})
        raise NotFound(f"no thumbnail of {eid}")

    def stamp(request: Request):
        kind = request.path_params["kind"]
        if kind not in images.STAMP_KINDS:
            raise BadRequest(f"stamp {kind!r}: expected one of {', '.join(images.STAMP_KINDS)}")
        c = data.candidate(db, request.path_params["candidate_id"])
        binning = cfg.detector.qip_binning if c["lane"] == "qip" else 1
        key = (c["candidate_id"], kind)
        if key not in stamp_cache:
            alerts = store.path(store.key(ns, c["exposure_id"], c["lane"], "alerts.avro"))
            packet = (images.packets(str(alerts), alerts.stat().st_mtime).get(str(c["alert_id"]))
                      if c["alert_id"] and alerts.exists() else None)
            if packet is not None:
                pixels = images.packet_stamp(packet, kind)
            else:
                path = bundle(c["exposure_id"], c["lane"])
                if not path.exists():
                    raise NotFound(f"no stamps of {c['candidate_id']}: neither its alert packet nor the bundle "
                                   f"of {c['exposure_id']}/{c['lane']} is in the product store")
                pixels = images.bundle_stamp(str(path), kind, c["x"], c["y"], cfg.alerts.cutout_size // binning | 1)
            stamp_cache[key] = images.stamp_png(pixels, kind, cfg.detector.pixel_scale * binning)
            while len(stamp_cache) > 4096:
                stamp_cache.pop(next(iter(stamp_cache)))
        return Response(stamp_cache[key], media_type="image/png", headers={"Cache-Control": "max-age=300"})

    def cached(kind: str, inputs, draw) -> Response:
        """A plot drawn once per distinct input (the last 256 kept)."""
        key = (kind, json.dumps(inputs, sort_keys=True, default=str))
        if key not in plot_cache:
            plot_cache[key] = draw()
            while len(plot_cache) > 256:
                plot_cache.pop(next(iter(plot_cache)))
        return Response(plot_cache[key], media_type="image/png")

    def light_curve(request: Request):
        o = data.obj(db, request.path_params["object_id"])
        return cached("lc", o["light_curve"], lambda: images.light_curve_png(o["light_curve"], o["object_id"]))

    def latency(request: Request):
        n = data.night(db, request.query_params.get("night") or None)
        return cached("latency", [n["night"], n["latency_s"]],
                      lambda: images.latency_png(n["latency_s"], f"night {n['night']}: {len(n['latency_s'])} alerts"))

    def plan(request: Request):
        event = request.path_params["event_id"]
        ev = next((e for e in data.too(db, grid())["events"] if e["event_id"] == event), None)
        if ev is None:
            raise NotFound(f"no active ToO event {event!r}")
        return cached("plan", [ev["skymap_path"], ev["fields"]],
                      lambda: images.plan_png(ev["fields"], f"{event} {ev['alert_type'] or ''}", data.skymap(ev)))

    def alert_file(request: Request):
        from ast3stream.alerts import read_avro_file, write_avro_file
        from ast3stream.alerts.output import to_json

        aid, fmt = request.path_params["alert_id"], request.path_params["fmt"]
        if fmt not in ("avro", "json"):
            raise BadRequest(f"format {fmt!r}: expected avro or json")
        row = data.alert_row(db, aid)
        path = store.path(store.key(ns, row["exposure_id"], row["lane"], "alerts.avro"))
        packet = next((p for p in (read_avro_file(path) if path.exists() else []) if str(p["alertId"]) == aid), None)
        if packet is None:
            raise NotFound(f"alert {aid} is not in the product store ({path.name} of {row['exposure_id']}/{row['lane']})")
        if fmt == "json":
            return Response(to_json(packet, cutouts=True), media_type="application/json")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            body = Path(write_avro_file([packet], Path(tmp) / f"{aid}.avro")).read_bytes()
        return Response(body, media_type="application/avro",
                        headers={"Content-Disposition": f'attachment; filename="{aid}.avro"'})

    # -- operator actions -------------------------------------------------------------------
    def action(run, back):
        async def handler(request: Request):
            api = request.url.path.startswith("/api/")
            form = {} if api else dict(await request.form())
            given = form.get("token") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            to = back(request)
            try:
                if pc.token is None:
                    raise PermissionError("the portal is read-only: set portal.token to allow operator actions")
                if not given or not hmac.compare_digest(given.encode(), pc.token.encode()):
                    raise PermissionError("operator token missing or wrong")
                result = await run(request, form)
            except PermissionError as exc:
                return _outcome(api, to, 403, str(exc))
            except NotFound as exc:
                return _outcome(api, to, 404, str(exc))
            except (BadRequest, KeyError) as exc:
                return _outcome(api, to, 400, str(exc).strip("'\""))
            except actions.ActionFailed as exc:
                return _outcome(api, to, 409, str(exc))
            log.warning("portal: operator action %s: %s", request.url.path, result)
            if api:
                return JSONResponse(result)
            return RedirectResponse(f"{to}?{urlencode({'msg': _summary(result)})}", status_code=303)
        return handler

    def _outcome(api: bool, to: str, status: int, reason: str):
        if api:
            return JSONResponse({"error": reason}, status_code=status)
        return RedirectResponse(f"{to}?{urlencode({'err': reason})}", status_code=303)

    async def do_retry(request: Request, form: dict):
        try:
            dl_id = int(request.path_params["dl_id"])
        except ValueError:
            raise BadRequest(f"dead letter id {request.path_params['dl_id']!r} is not a number") from None
        return await actions.retry(res, data.dead_letter(db, dl_id), originals)

    async def do_set(request: Request, form: dict):
        exposure_id = form.get("exposure") or request.query_params.get("exposure")
        if not exposure_id:
            raise BadRequest("template set needs exposure=EXPOSURE_ID")
        return await actions.template_set(res, request.path_params["field_id"], exposure_id)

    async def do_rebuild(request: Request, form: dict):
        return await actions.template_rebuild(res, request.path_params["field_id"])

    def fragment(request: Request):
        try:
            n = data.night(db, request.query_params.get("night") or None)
        except (BadRequest, NotFound) as exc:
            return HTMLResponse(str(exc), status_code=404)
        return HTMLResponse(env.get_template("_exposures.html").render(data=n))

    dead_page, tmpl_page = (lambda r: "/deadletters"), (lambda r: "/templates")
    pages = [("/", night_data, "night.html"), ("/exposures/{exposure_id:path}", exposure_data, "exposure.html"),
             ("/candidates", candidates_data, "candidates.html"),
             ("/candidates/{candidate_id:path}", candidate_data, "candidate.html"),
             ("/objects/{object_id}", object_data, "object.html"), ("/too", too_data, "too.html"),
             ("/deadletters", dead_data, "deadletters.html"), ("/templates", templates_data, "templates.html")]
    routes = []
    for path, fn, template in pages:
        routes.append(Route(path, endpoint(fn, template)))
        routes.append(Route("/api/night" if path == "/" else f"/api{path}", endpoint(fn)))
    routes += [
        Route("/fragments/exposures", fragment),
        Route("/img/thumbnail/{exposure_id:path}.png", endpoint(thumbnail)),
        Route("/img/stamp/{kind}/{candidate_id:path}.png", endpoint(stamp)),
        Route("/img/lightcurve/{object_id}.png", endpoint(light_curve)),
        Route("/img/latency.png", endpoint(latency)),
        Route("/img/plan/{event_id}.png", endpoint(plan)),
        Route("/alerts/{alert_id}.{fmt}", endpoint(alert_file)),
        Route("/deadletters/{dl_id}/retry", action(do_retry, dead_page), methods=["POST"]),
        Route("/api/deadletters/{dl_id}/retry", action(do_retry, dead_page), methods=["POST"]),
        Route("/templates/{field_id}/set", action(do_set, tmpl_page), methods=["POST"]),
        Route("/api/templates/{field_id}/set", action(do_set, tmpl_page), methods=["POST"]),
        Route("/templates/{field_id}/rebuild", action(do_rebuild, tmpl_page), methods=["POST"]),
        Route("/api/templates/{field_id}/rebuild", action(do_rebuild, tmpl_page), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes)


def _summary(result: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in result.items())


def _header(path: str | None) -> list[tuple[str, str, str]]:
    """The raw file's primary header cards (keyword, value, comment), when the file is there."""
    from astropy.io import fits

    if not path or not Path(path).is_file():
        return []
    try:
        header = fits.getheader(path)
    except (OSError, ValueError):
        return []
    return [(c.keyword, str(c.value), c.comment) for c in header.cards]


def bind(cfg: Settings) -> socket.socket:
    """The portal's listening socket (``portal.host``:``portal.port``; port 0 = any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.portal.host, cfg.portal.port))
    sock.listen(64)
    return sock


def serve(cfg: Settings, res: Resources | None = None):
    """A uvicorn server for the portal (not started); ``server.run(sockets=[sock])`` serves it."""
    import uvicorn

    config = uvicorn.Config(create_app(cfg, res), log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}/"


@contextlib.contextmanager
def in_background(cfg: Settings, res: Resources | None = None):
    """Serve the portal in a thread for the block; yields its URL (None when it is disabled
    or its port is taken: the stack runs without it)."""
    if not cfg.portal.enabled:
        yield None
        return
    try:
        sock = bind(cfg)
    except OSError as exc:
        log.warning("portal not started: %s:%d: %s", cfg.portal.host, cfg.portal.port, exc)
        yield None
        return
    server = serve(cfg, res)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="portal")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
