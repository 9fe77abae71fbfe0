"""Client security settings, in one place, for every Kafka client (the faust workers, the
watcher's producer, ``alerts listen``, ``replay``, ``filters``), the schema registry and PostgreSQL.

From :class:`~ast3stream.config.SecurityConfig`: ``SASL_SSL`` with SCRAM-SHA-256/512 (or PLAIN)
and a username/password, ``SASL_SSL`` with OAUTHBEARER (OAuth 2 client-credentials tokens from
``oauth_token_url``), ``SSL`` (optionally mutual TLS), or ``PLAINTEXT`` (the embedded broker).
Passwords and client secrets come from the environment or a ``*_file``; they are held as
:class:`pydantic.SecretStr` and never logged.
"""
from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.parse
import urllib.request
from pathlib import Path

from aiokafka.abc import AbstractTokenProvider

from ast3stream.config import AlertConfig, SecurityConfig


def secret(value, path: Path | None) -> str | None:
    """A secret from its ``SecretStr`` value, else from the first line of ``path``."""
    if value is not None:
        return value.get_secret_value()
    if path is not None:
        return Path(path).read_text().splitlines()[0].strip()
    return None


def ssl_context(sec: SecurityConfig) -> ssl.SSLContext:
    """TLS context: the CA bundle (else the system's), an optional client certificate."""
    ctx = ssl.create_default_context(cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None)
    ctx.check_hostname = sec.ssl_check_hostname
    if sec.ssl_certfile:
        ctx.load_cert_chain(str(sec.ssl_certfile), str(sec.ssl_keyfile) if sec.ssl_keyfile else None)
    return ctx


class OAuthClientCredentials(AbstractTokenProvider):
    """OAUTHBEARER tokens from an OAuth 2 token endpoint (client-credentials grant), reused
    until a minute before they expire."""

    def __init__(self, sec: SecurityConfig):
        if not (sec.oauth_token_url and sec.oauth_client_id):
            raise ValueError("OAUTHBEARER needs security.oauth_token_url and security.oauth_client_id")
        self.sec = sec
        self._token: str | None = None
        self._expires = 0.0

    async def token(self) -> str:
        if self._token is None or time.time() > self._expires - 60:
            self._token, lifetime = await asyncio.to_thread(self._fetch)
            self._expires = time.time() + lifetime
        return self._token

    def _fetch(self) -> tuple[str, float]:
        sec = self.sec
        form = {"grant_type": "client_credentials", "client_id": sec.oauth_client_id,
                "client_secret": secret(sec.oauth_client_secret, sec.oauth_client_secret_file) or ""}
        if sec.oauth_scope:
            form["scope"] = sec.oauth_scope
        req = urllib.request.Request(sec.oauth_token_url, data=urllib.parse.urlencode(form).encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        tls = ssl_context(sec) if sec.oauth_token_url.startswith("https") else None
        with urllib.request.urlopen(req, timeout=10, context=tls) as resp:
            reply = json.loads(resp.read())
        return reply["access_token"], float(reply.get("expires_in", 300))


def kafka_options(sec: SecurityConfig) -> dict:
    """Keyword arguments for every aiokafka client (producer, consumer, admin)."""
    opts: dict = {"security_protocol": sec.kafka_protocol}
    if sec.kafka_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = ssl_context(sec)
    if sec.kafka_protocol.startswith("SASL"):
        mechanism = sec.kafka_sasl_mechanism
        if mechanism is None:
            raise ValueError(f"security.kafka_protocol = {sec.kafka_protocol} needs security.kafka_sasl_mechanism")
        opts["sasl_mechanism"] = mechanism
        if mechanism == "OAUTHBEARER":
            opts["sasl_oauth_token_provider"] = OAuthClientCredentials(sec)
        else:
            password = secret(sec.kafka_password, sec.kafka_password_file)
            if not sec.kafka_username or password is None:
                raise ValueError(f"SASL {mechanism} needs security.kafka_username and a password "
                                 "(AST3_SECURITY__KAFKA_PASSWORD or security.kafka_password_file)")
            opts.update(sasl_plain_username=sec.kafka_username, sasl_plain_password=password)
    return opts


def faust_credentials(sec: SecurityConfig):
    """``broker_credentials`` for :class:`faust.App` (None for PLAINTEXT)."""
    import faust

    if sec.kafka_protocol == "PLAINTEXT":
        return None
    if sec.kafka_protocol == "SSL":
        return faust.SSLCredentials(ssl_context(sec))
    opts = kafka_options(sec)
    if opts["sasl_mechanism"] == "OAUTHBEARER":
        return faust.OAuthCredentials(oauth_cb=opts["sasl_oauth_token_provider"], ssl_context=opts.get("ssl_context"))
    return faust.SASLCredentials(username=opts["sasl_plain_username"], password=opts["sasl_plain_password"],
                                 mechanism=opts["sasl_mechanism"], ssl_context=opts.get("ssl_context"))


def registry(alerts: AlertConfig, sec: SecurityConfig):
    """The schema registry client of ``alerts.registry_url`` (None without one)."""
    if not alerts.registry_url:
        return None
    from ast3stream.alerts.registry import SchemaRegistry

    tls = ssl_context(sec) if alerts.registry_url.startswith("https") else None
    return SchemaRegistry(alerts.registry_url, username=sec.registry_username, ssl_context=tls,
                          password=secret(sec.registry_password, sec.registry_password_file))


def database_connect_args(sec: SecurityConfig) -> dict:
    """libpq TLS parameters for SQLAlchemy's ``connect_args`` (PostgreSQL via psycopg)."""
    args = {"sslmode": sec.database_sslmode, "sslrootcert": sec.database_sslrootcert,
            "sslcert": sec.database_sslcert, "sslkey": sec.database_sslkey}
    return {k: str(v) for k, v in args.items() if v is not None}
