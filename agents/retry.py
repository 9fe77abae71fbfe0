"""Infrastructure that comes back (the database, the broker): hold the work and try again.

A step that meets such an error is repeated with backoff and never dead-lettered; any
other error is the message's own fault and propagates.
"""
from __future__ import annotations

import asyncio
import itertools
import logging

from aiokafka.errors import KafkaError, KafkaTimeoutError, KafkaUnavailableError, ProducerClosed

from agents.db import DatabaseUnavailable

log = logging.getLogger("ast3stream.agents")

RETRY_FIRST_S = 0.5  #: first wait before a step that met a transient error is tried again
RETRY_MAX_S = 30.0   #: the wait doubles up to this


def transient(exc: BaseException) -> bool:
    """True for errors of infrastructure that comes back: the database or the broker away."""
    while exc is not None:
        if isinstance(exc, DatabaseUnavailable):
            return True
        if isinstance(exc, KafkaError) and (exc.retriable or isinstance(
                exc, (KafkaTimeoutError, KafkaUnavailableError, ProducerClosed))):
            return True
        exc = exc.__cause__
    return False


async def retrying(what: str, fn, *args, **kwargs):
    """``await fn(*args, **kwargs)``, run again after transient errors with backoff (capped at ``RETRY_MAX_S``)."""
    for attempt in itertools.count(1):
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not transient(exc):
                raise
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempt - 1))
            log.warning("%s: %s: %s; holding the message, attempt %d again in %.1f s",
                        what, type(exc).__name__, exc, attempt + 1, delay)
            await asyncio.sleep(delay)
