"""A SASL_SSL listener for the tests: TLS plus SASL/SCRAM-SHA-256/512 (RFC 5802, RFC 7677)
in front of the embedded Tansu broker, which has no SASL of its own.

Tansu listens on loopback and advertises the gateway's address, so every connection a client
makes (bootstrap and the broker from the metadata) comes through here. Before authentication
only ApiVersions (relayed to Tansu), SaslHandshake and SaslAuthenticate (v0/v1, answered here)
are allowed, as on a Kafka SASL listener; anything else closes the connection. Once the SCRAM
exchange has proved the password, bytes are piped to Tansu unchanged.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import subprocess
import threading

from agents.broker import die_with_parent, free_port, tansu_binary

HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED, ILLEGAL_SASL_STATE = 33, 58, 34


class Scram:
    """The server side of one SCRAM exchange."""

    def __init__(self, mechanism: str, users: dict[str, str], iterations: int = 4096):
        self.hash, self.users, self.iterations = HASHES[mechanism], users, iterations
        self.state = "first"
        self.user: str | None = None

    def step(self, message: bytes) -> bytes:
        text = message.decode()
        if self.state == "first":
            _, _, bare = text.partition(",,")                    # gs2 header "n,,"
            attrs = dict(kv.split("=", 1) for kv in bare.split(","))
            self.user, cnonce = attrs["n"], attrs["r"]
            if self.user not in self.users:
                raise PermissionError("unknown user")
            self.salt = os.urandom(16)
            self.nonce = cnonce + base64.b64encode(os.urandom(18)).decode()
            self.server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
            self.client_first_bare = bare
            self.state = "final"
            return self.server_first.encode()
        attrs = dict(kv.split("=", 1) for kv in text.split(","))
        without_proof = text[:text.rindex(",p=")]
        if attrs["r"] != self.nonce:
            raise PermissionError("nonce mismatch")
        salted = hashlib.pbkdf2_hmac(self.hash, self.users[self.user].encode(), self.salt, self.iterations)
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        stored_key = hashlib.new(self.hash, client_key).digest()
        auth = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth, self.hash).digest()
        proof = base64.b64decode(attrs["p"])
        recovered = bytes(a ^ b for a, b in zip(proof, signature))
        if hashlib.new(self.hash, recovered).digest() != stored_key:
            raise PermissionError("wrong password")
        server_key = hmac.new(salted, b"Server Key", self.hash).digest()
        self.state = "done"
        return b"v=" + base64.b64encode(hmac.new(server_key, auth, self.hash).digest())


async def _frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _send(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(struct.pack(">i", len(payload)) + payload)


class SaslGateway:
    """Tansu behind a SASL_SSL listener on ``127.0.0.1:port`` (address ``localhost:port``)."""

    def __init__(self, users: dict[str, str], certfile, keyfile, mechanisms=tuple(HASHES)):
        self.users, self.mechanisms = users, list(mechanisms)
        self.port, self.upstream = free_port(), free_port()
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(str(certfile), str(keyfile))
        self.failures: list[str] = []
        self.authenticated: list[str] = []     #: one entry per connection that proved its password
        self.loop = asyncio.new_event_loop()

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    def __enter__(self) -> "SaslGateway":
        self.proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{self.upstream}",
             "--advertised-listener-url", f"tcp://localhost:{self.port}", "--storage-engine", "memory://tansu/",
             "--cluster-id", "sasl"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent)
        ready = threading.Event()

        async def serve():
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=self.tls)
            ready.set()

        threading.Thread(target=lambda: (self.loop.run_until_complete(serve()), self.loop.run_forever()),
                         daemon=True).start()
        ready.wait(10)
        import socket
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.upstream), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("Tansu behind the SASL gateway did not start")

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.proc.terminate()
        self.proc.wait(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader = up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            if await self._authenticate(reader, writer, up_reader, up_writer):
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def _authenticate(self, reader, writer, up_reader, up_writer) -> bool:
        scram = None
        while True:
            frame = await _frame(reader)
            api_key, version, cid, client_len = struct.unpack_from(">hhih", frame)
            body = frame[10 + max(client_len, 0):]
            if api_key == 18:                                           # ApiVersions: Tansu's answer
                _send(up_writer, frame)
                _send(writer, await _frame(up_reader))
            elif api_key == 17 and version in (0, 1):                   # SaslHandshake
                n = struct.unpack_from(">h", body)[0]
                mechanism = body[2:2 + n].decode()
                ok = mechanism in self.mechanisms
                scram = Scram(mechanism, self.users) if ok else None
                listed = b"".join(struct.pack(">h", len(m)) + m.encode() for m in self.mechanisms)
                _send(writer, struct.pack(">ihi", cid, 0 if ok else UNSUPPORTED_SASL_MECHANISM, len(self.mechanisms)) + listed)
            elif api_key == 36 and version in (0, 1) and scram is not None:  # SaslAuthenticate
                n = struct.unpack_from(">i", body)[0]
                try:
                    reply, code, message = scram.step(body[4:4 + n]), 0, None
                except (PermissionError, KeyError, ValueError) as exc:
                    reply, code, message = b"", SASL_AUTHENTICATION_FAILED, f"Authentication failed: {exc}"
                    self.failures.append(str(exc))
                text = struct.pack(">h", -1) if message is None else struct.pack(">h", len(message)) + message.encode()
                out = struct.pack(">ih", cid, code) + text + struct.pack(">i", len(reply)) + reply
                _send(writer, out + (struct.pack(">q", 0) if version >= 1 else b""))
                await writer.drain()
                if code:
                    return False
                if scram.state == "done":
                    self.authenticated.append(scram.user)
                    return True
            else:                                                       # not allowed before authentication
                self.failures.append(f"api {api_key} v{version} before authentication")
                return False
            await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
