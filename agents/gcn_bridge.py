"""GCN Kafka in (LVK notices republished unchanged to ``{prefix}.gw``) and, optionally, out.

Consumes the ``gw.gcn.topics`` of GCN's broker (``igwn.gwalert``: LVK JSON with the base64
multi-order map; ``gcn.classic.voevent.LVC_*``: VOEvent XML) with GCN's own settings:
SASL_SSL + OAUTHBEARER, tokens from GCN's OIDC endpoint by the client-credentials grant,
client id and secret from ``GCN_CLIENT_ID`` / ``GCN_CLIENT_SECRET`` (never logged). Each
message's bytes go to ``{prefix}.gw`` as they are, keyed by the GCN topic they came from, and
the GCN offset is committed only once our broker has them (at least once; the GW stage is
idempotent). With ``oauth = false`` it talks plaintext to any Kafka broker (tests point it at
the embedded broker playing GCN). With ``gw.gcn.publish_topic`` our own GCN-style notices
(``{prefix}.gcn``) go out the same way to that topic on GCN's broker.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.parse
import urllib.request

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.helpers import create_ssl_context

from .topics import topic

log = logging.getLogger("ast3stream.gcn")


class GCNToken(AbstractTokenProvider):
    """OAuth2 client-credentials tokens for GCN Kafka, renewed a minute before they expire."""

    def __init__(self, token_url: str, client_id: str, client_secret: str):
        self._url, self._id, self._secret = token_url, client_id, client_secret
        self._token, self._expires = "", 0.0

    def _fetch(self) -> tuple[str, float]:
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": self._id,
                                       "client_secret": self._secret}).encode()
        with urllib.request.urlopen(urllib.request.Request(self._url, data=body), timeout=30) as r:
            answer = json.load(r)
        return answer["access_token"], time.time() + float(answer.get("expires_in", 3600))

    async def token(self) -> str:
        if time.time() > self._expires - 60:
            self._token, self._expires = await asyncio.to_thread(self._fetch)
        return self._token


def client_settings(gcn, env=os.environ) -> dict:
    """aiokafka security settings for GCN (empty for a plaintext broker)."""
    if not gcn.oauth:
        return {}
    cid, secret = env.get("GCN_CLIENT_ID"), env.get("GCN_CLIENT_SECRET")
    if not cid or not secret:
        raise RuntimeError("GCN Kafka needs GCN_CLIENT_ID and GCN_CLIENT_SECRET in the environment "
                           "(or gw.gcn.oauth = false for a plaintext broker)")
    return dict(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", ssl_context=create_ssl_context(),
                sasl_oauth_token_provider=GCNToken(gcn.token_url, cid, secret))


async def bridge(gcn, bootstrap: str, prefix: str, stop: asyncio.Event | None = None) -> int:
    """Forward GCN notices to ``{prefix}.gw`` on ``bootstrap`` until ``stop`` is set, and, with
    ``gcn.publish_topic``, our ``{prefix}.gcn`` notices out to GCN; the number of messages moved."""
    security = client_settings(gcn)
    routes = [(AIOKafkaConsumer(*gcn.topics, bootstrap_servers=gcn.bootstrap, group_id=gcn.group_id,
                                enable_auto_commit=False, auto_offset_reset=gcn.offset_reset,
                                max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20, **security),
               AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_request_size=16 << 20),
               lambda m: (topic(prefix, "gw"), m.topic.encode()))]
    if gcn.publish_topic:
        routes.append((AIOKafkaConsumer(topic(prefix, "gcn"), bootstrap_servers=bootstrap,
                                        group_id=f"{gcn.group_id}-out", enable_auto_commit=False,
                                        auto_offset_reset="earliest"),
                       AIOKafkaProducer(bootstrap_servers=gcn.bootstrap, linger_ms=0, **security),
                       lambda m: (gcn.publish_topic, None)))
    for consumer, producer, _ in routes:
        await consumer.start()
        await producer.start()
    log.warning("GCN bridge: %s on %s -> %s%s", ", ".join(gcn.topics), gcn.bootstrap, topic(prefix, "gw"),
                f"; {topic(prefix, 'gcn')} -> {gcn.publish_topic}" if gcn.publish_topic else "")
    n = 0
    try:
        while stop is None or not stop.is_set():
            for consumer, producer, where in routes:
                batches = await consumer.getmany(timeout_ms=250)
                for messages in batches.values():
                    for m in messages:
                        out, key = where(m)
                        await producer.send_and_wait(out, m.value, key=key)
                        n += 1
                        log.info("%s offset %d -> %s (%d bytes)", m.topic, m.offset, out, len(m.value or b""))
                if batches:
                    await consumer.commit()
    finally:
        for consumer, producer, _ in routes:
            await consumer.stop()
            await producer.stop()
    return n
