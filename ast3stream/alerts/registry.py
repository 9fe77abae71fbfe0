"""A schema registry client (Confluent / Karapace REST API), standard library only.

``register(subject, schema)`` gives the registry's id of a schema under a subject (the
registry returns the existing id when the schema is already there); ``schema(id)`` fetches a
writer's schema by id (cached). Subjects follow the Confluent default (TopicNameStrategy):
``<topic>-value``. Credentials (HTTP basic) and TLS come from the caller (see
:mod:`ast3stream.security`); they are never logged or put in error messages.
"""
from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from functools import lru_cache

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(RuntimeError):
    """The registry refused a request or could not be reached."""


class SchemaRegistry:
    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self._auth = None if username is None else "Basic " + base64.b64encode(
            f"{username}:{password or ''}".encode()).decode()
        self._ssl = ssl_context
        self.timeout_s = timeout_s
        self.schema = lru_cache(maxsize=256)(self._schema)

    def register(self, subject: str, schema: dict | str) -> int:
        """The id of ``schema`` under ``subject`` (registering it when new)."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        reply = self._request("POST", f"/subjects/{urllib.parse.quote(subject, safe='')}/versions",
                              {"schema": text, "schemaType": "AVRO"})
        return int(reply["id"])

    def _schema(self, schema_id: int) -> dict:
        """The schema with ``schema_id`` (parsed JSON, not yet a fastavro schema)."""
        return json.loads(self._request("GET", f"/schemas/ids/{int(schema_id)}")["schema"])

    def latest(self, subject: str) -> tuple[int, dict]:
        reply = self._request("GET", f"/subjects/{urllib.parse.quote(subject, safe='')}/versions/latest")
        return int(reply["id"]), json.loads(reply["schema"])

    def subjects(self) -> list[str]:
        return list(self._request("GET", "/subjects"))

    def _request(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE})
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ssl) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("message", "")
            except ValueError:
                detail = ""
            raise RegistryError(f"schema registry {method} {path}: HTTP {exc.code} {detail}".rstrip()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"schema registry {self.url} unreachable: {reason}") from None


def subject(topic: str) -> str:
    """The value subject of ``topic`` (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"
