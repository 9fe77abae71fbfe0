"""Kafka, registry and PostgreSQL security settings: one module (agents.security) builds every
client's options; secrets come from the environment or a file, never from the settings file,
and never show in logs, reprs or saved settings."""
from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.security import database_connect_args, faust_credentials, kafka_options, registry
from ast3stream.config import SecurityConfig, Settings


@pytest.fixture
def tls_files(tmp_path):
    """A self-signed certificate for 127.0.0.1/localhost and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


async def construct(client, **opts):
    """The Kafka client of an aiokafka producer or consumer made with ``opts`` (not started)."""
    c = client(bootstrap_servers="127.0.0.1:1", **opts)
    kafka = getattr(c, "client", None) or c._client
    await c.stop()
    return kafka


def test_scram_over_tls_options_pass_aiokafka_validation(tls_files, monkeypatch, tmp_path):
    cert, _ = tls_files
    monkeypatch.setenv("AST3_SECURITY__KAFKA_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("AST3_SECURITY__KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("AST3_SECURITY__KAFKA_USERNAME", "ast3-worker")
    monkeypatch.setenv("AST3_SECURITY__KAFKA_PASSWORD", "pw-from-env")
    monkeypatch.setenv("AST3_SECURITY__SSL_CAFILE", str(cert))
    cfg = Settings.load()
    opts = kafka_options(cfg.security)
    assert opts["sasl_plain_password"] == "pw-from-env" and isinstance(opts["ssl_context"], ssl.SSLContext)
    assert opts["ssl_context"].verify_mode == ssl.CERT_REQUIRED and opts["ssl_context"].check_hostname
    for client in (AIOKafkaProducer, AIOKafkaConsumer):     # aiokafka's own checks of the SASL settings
        kafka = asyncio.run(construct(client, **opts))
        assert (kafka._security_protocol, kafka._sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    creds = faust_credentials(cfg.security)
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.username == "ast3-worker"
    # never shown: repr, JSON dump, the file a worker is started with
    assert "pw-from-env" not in repr(cfg.security) and "pw-from-env" not in cfg.model_dump_json()
    saved = json.loads(cfg.save(tmp_path / "worker.json").read_text())
    assert "kafka_password" not in saved["security"] and saved["security"]["kafka_username"] == "ast3-worker"
    assert Settings.load(tmp_path / "worker.json").security.kafka_password.get_secret_value() == "pw-from-env"


def test_secrets_come_from_env_or_file_never_the_settings_file(tmp_path):
    (tmp_path / "site.toml").write_text('[security]\nkafka_username = "u"\nkafka_password = "in-the-file"\n')
    with pytest.raises(ValueError, match="kafka_password must come from the environment"):
        Settings.load(tmp_path / "site.toml")
    (tmp_path / "pw").write_text("from-a-secrets-file\n")
    sec = SecurityConfig(kafka_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
                         kafka_username="u", kafka_password_file=tmp_path / "pw")
    assert kafka_options(sec)["sasl_plain_password"] == "from-a-secrets-file"
    with pytest.raises(ValueError, match="needs security.kafka_username and a password"):
        kafka_options(SecurityConfig(kafka_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256"))
    with pytest.raises(ValueError, match="needs security.kafka_sasl_mechanism"):
        kafka_options(SecurityConfig(kafka_protocol="SASL_SSL"))


def test_oauthbearer_tokens_from_a_client_credentials_endpoint():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qs

    seen = []

    class Token(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            body = json.dumps({"access_token": f"tok{len(seen)}", "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Token)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sec = SecurityConfig(kafka_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="OAUTHBEARER",
                             oauth_token_url=f"http://127.0.0.1:{server.server_port}/token",
                             oauth_client_id="ast3", oauth_client_secret="cs", oauth_scope="kafka")
        opts = kafka_options(sec)
        provider = opts["sasl_oauth_token_provider"]
        assert asyncio.run(provider.token()) == "tok1" and asyncio.run(provider.token()) == "tok1"   # reused
        assert seen == [{"grant_type": ["client_credentials"], "client_id": ["ast3"], "client_secret": ["cs"],
                         "scope": ["kafka"]}]
        asyncio.run(construct(AIOKafkaProducer, **opts))              # aiokafka accepts the provider
    finally:
        server.shutdown()


def test_registry_and_postgres_tls_settings(tls_files):
    from ast3stream.config import AlertConfig

    cert, key = tls_files
    assert registry(AlertConfig(), SecurityConfig()) is None
    reg = registry(AlertConfig(registry_url="https://registry:8081"),
                   SecurityConfig(ssl_cafile=cert, registry_username="r", registry_password="p"))
    assert reg.url == "https://registry:8081" and reg._ssl.verify_mode == ssl.CERT_REQUIRED
    args = database_connect_args(SecurityConfig(database_sslmode="verify-full", database_sslrootcert=cert,
                                                database_sslcert=cert, database_sslkey=key))
    assert args == {"sslmode": "verify-full", "sslrootcert": str(cert), "sslcert": str(cert), "sslkey": str(key)}


@pytest.mark.broker
def test_a_client_connects_with_scram_over_tls(tls_files):
    """The real thing: our settings -> aiokafka -> TLS -> SASL/SCRAM-SHA-512 -> a broker: topic
    creation, an alert produced and read back through ``alerts()``; a wrong password and a
    PLAINTEXT client are refused."""
    from aiokafka.errors import KafkaError

    from agents.broker import ensure_topics
    from agents.listen import alerts
    from ast3stream.alerts import build_alert, encode
    from sasl_gateway import SaslGateway

    cert, key = tls_files
    packet = build_alert({"x": 1.0, "y": 2.0, "ra": 10.0, "dec": 20.0, "mag": 18.0, "mag_err": 0.1, "snr": 9.0,
                          "sign": 1, "rb": 0.9, "object_id": "A3sasl"}, [], None, {},
                         {"exposure_id": "e1", "lane": "dip", "mjd": 60500.0})

    def sec(password: str, protocol: str = "SASL_SSL") -> dict:
        return kafka_options(SecurityConfig(kafka_protocol=protocol, kafka_sasl_mechanism="SCRAM-SHA-512",
                                            kafka_username="alice", kafka_password=password, ssl_cafile=cert))

    async def round_trip(opts: dict, bootstrap: str) -> list[dict]:
        await ensure_topics(bootstrap, ["sasl.alerts"], client_options=opts)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, **opts)
        await producer.start()
        try:
            await producer.send_and_wait("sasl.alerts", encode(packet), key=b"A3sasl")
        finally:
            await producer.stop()
        return [a async for a in alerts(bootstrap, ["sasl.alerts"], from_beginning=True, timeout_s=3.0, **opts)]

    async def refused(opts: dict, bootstrap: str) -> bool:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000, **opts)
        try:
            await asyncio.wait_for(producer.start(), 10)
        except (KafkaError, asyncio.TimeoutError, OSError):
            return True
        finally:
            await producer.stop()
        return False

    with SaslGateway({"alice": "alice-pw"}, cert, key) as gw:
        got = asyncio.run(round_trip(sec("alice-pw"), gw.bootstrap))
        assert [a["objectId"] for a in got] == ["A3sasl"] and got[0] == packet
        assert gw.failures == [] and set(gw.authenticated) == {"alice"} and len(gw.authenticated) >= 3
        assert asyncio.run(refused(sec("wrong-pw"), gw.bootstrap)) and gw.failures[-1] == "wrong password"
        assert asyncio.run(refused({}, gw.bootstrap))                       # PLAINTEXT to a TLS listener
