"""A schema registry for the tests: the subset of the Confluent Schema Registry REST API that
producers and consumers use (Karapace serves the same), in memory, on loopback.

Register (``POST /subjects/{s}/versions``, with an optional ``id`` as in IMPORT mode), look up
(``POST /subjects/{s}``), fetch by id (``GET /schemas/ids/{id}``), list subjects and versions,
latest version. The same schema (as parsed JSON) gets the same id under every subject, as in
the real registry. Optional HTTP basic credentials.
"""
from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class Registry:
    def __init__(self, username: str | None = None, password: str | None = None):
        self.ids: dict[str, int] = {}              # normalized schema -> id
        self.schemas: dict[int, str] = {}           # id -> schema text
        self.subjects: dict[str, list[int]] = {}    # subject -> ids by version
        self.auth = None if username is None else "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "Registry":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def register(self, subject: str, text: str, schema_id: int | None = None) -> int:
        key = json.dumps(json.loads(text), sort_keys=True)
        with self.lock:
            sid = self.ids.get(key) or schema_id or max([0, *self.schemas]) + 1
            self.ids[key], self.schemas[sid] = sid, text
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return sid

    def _entry(self, subject: str, version: int) -> dict:
        sid = self.subjects[subject][version - 1]
        return {"subject": subject, "version": version, "id": sid, "schema": self.schemas[sid]}

    def route(self, method: str, path: str, body: dict | None):
        path = path.split("?")[0]
        if method == "GET" and (m := re.fullmatch(r"/schemas/ids/(\d+)", path)):
            sid = int(m[1])
            return (200, {"schema": self.schemas[sid]}) if sid in self.schemas else (404, _error(40403, "Schema not found"))
        if method == "GET" and path == "/subjects":
            return 200, sorted(self.subjects)
        m = re.fullmatch(r"/subjects/([^/]+)(/versions(?:/(latest|\d+))?)?", path)
        if not m:
            return 404, _error(404, f"no route {method} {path}")
        subject = m[1].replace("%2F", "/")
        if method == "POST" and m[2] == "/versions":
            return 200, {"id": self.register(subject, body["schema"], body.get("id"))}
        if subject not in self.subjects:
            return 404, _error(40401, f"Subject '{subject}' not found.")
        if method == "POST" and not m[2]:
            key = json.dumps(json.loads(body["schema"]), sort_keys=True)
            sid = self.ids.get(key)
            if sid not in self.subjects[subject]:
                return 404, _error(40403, "Schema not found")
            return 200, self._entry(subject, self.subjects[subject].index(sid) + 1)
        if method == "GET" and m[2] == "/versions":
            return 200, list(range(1, len(self.subjects[subject]) + 1))
        if method == "GET" and m[3]:
            version = len(self.subjects[subject]) if m[3] == "latest" else int(m[3])
            return 200, self._entry(subject, version)
        return 404, _error(404, f"no route {method} {path}")

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                if registry.auth and self.headers.get("Authorization") != registry.auth:
                    code, reply = 401, _error(40101, "Unauthorized")
                else:
                    n = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(n)) if n else None
                    code, reply = registry.route(method, self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, *args):
                pass

        return Handler


def _error(code: int, message: str) -> dict:
    return {"error_code": code, "message": message}
