"""The site deployment (deploy/): every file parses, every setting and command line is real, the
stages are split over the workers without gaps or overlaps, and topic set-up creates every topic
with its partitions and retention on the real embedded broker."""
from __future__ import annotations

import asyncio
import functools
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from agents.topics import DAY_MS, all_topics, topic_configs
from ast3stream.cli import build_parser, cmd_topics
from ast3stream.config import KafkaConfig, Settings
from ast3stream.pipeline import SLOW, STAGES

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ALL_STAGES = {s.name for s in (*STAGES, SLOW)} | {"gw", "filters"}
parser = functools.cache(build_parser)  # the real CLI parser (imports every command's module: build it once)


def interpolate(value) -> str:
    """Compose's ``${NAME:-default}`` with nothing set in the environment."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


def compose_services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def k8s_documents() -> list[dict]:
    return [d for f in sorted((DEPLOY / "k8s").rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def k8s_containers() -> list[tuple[dict, dict]]:
    """(workload, container) for every container and init container of the Jobs and Deployments."""
    return [(doc, c) for doc in k8s_documents() if doc["kind"] in ("Deployment", "Job")
            for key in ("initContainers", "containers") for c in doc["spec"]["template"]["spec"].get(key, [])]


def k8s_env(container: dict) -> dict[str, str]:
    """The environment of one container: its ConfigMaps and Secrets, then its own ``env``."""
    maps = {(d["kind"], d["metadata"]["name"]): {**d.get("data", {}), **d.get("stringData", {})}
            for d in k8s_documents() if d["kind"] in ("ConfigMap", "Secret")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        env.update(maps[kind, ref["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def ast3_commands() -> dict[str, list[str]]:
    """Every ``ast3stream ...`` command line of the compose file and the Kubernetes manifests."""
    out = {f"compose:{name}": shlex.split(interpolate(s["command"]))
           for name, s in compose_services().items() if "command" in s}
    out.update({f"k8s:{w['metadata']['name']}:{c['name']}": c["command"] for w, c in k8s_containers()})
    return {k: v for k, v in out.items() if v[0] == "ast3stream"}


def test_every_deploy_file_parses():
    files = sorted(DEPLOY.rglob("*.y*ml"))
    assert COMPOSE in files and len(files) >= 10
    for f in files:
        assert list(yaml.safe_load_all(f.read_text())), f
    kinds = {d["kind"] for d in k8s_documents()}
    assert {"ConfigMap", "Secret", "Job", "Deployment", "StatefulSet", "PersistentVolumeClaim", "Kustomization"} <= kinds
    for kust in (DEPLOY / "k8s").rglob("kustomization.yaml"):
        for res in yaml.safe_load(kust.read_text())["resources"]:
            assert (kust.parent / res).exists(), f"{kust}: {res}"
    pvc = next(d for d in k8s_documents() if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def setting_fields() -> dict[str, dict]:
    return {name: info.annotation.model_fields for name, info in Settings.model_fields.items()}


def check_env(env: dict[str, str], monkeypatch) -> None:
    """Every AST3_* variable names a real settings field, and Settings reads it."""
    fields = setting_fields()
    env = {k: v for k, v in env.items() if k.startswith("AST3_")}
    assert env
    for key in env:
        section, _, field = key[len("AST3_"):].lower().partition("__")
        assert field in fields.get(section, {}), f"{key} is not a setting"
        monkeypatch.setenv(key, env[key])
    cfg = Settings.load()
    for key, value in env.items():
        section, _, field = key[len("AST3_"):].lower().partition("__")
        got = getattr(getattr(cfg, section), field)
        assert str(got) == value or float(got) == float(value), key


def test_site_toml_keys_are_settings(monkeypatch):
    import tomllib

    monkeypatch.delenv("AST3_CONFIG", raising=False)
    fields = setting_fields()
    data = tomllib.loads((DEPLOY / "site.toml").read_text())
    for section, values in data.items():
        assert set(values) <= set(fields[section]), section
    assert Settings.load(DEPLOY / "site.toml").kafka.replication == data["kafka"]["replication"]


def test_compose_env_vars_are_settings(monkeypatch):
    monkeypatch.delenv("AST3_CONFIG", raising=False)
    for name, service in compose_services().items():
        if name in ("kafka", "postgres"):
            continue
        with monkeypatch.context() as m:
            check_env({k: interpolate(v) for k, v in service["environment"].items()}, m)


def test_k8s_env_vars_are_settings(monkeypatch):
    monkeypatch.delenv("AST3_CONFIG", raising=False)
    containers = [c for _, c in k8s_containers() if c["command"][0] == "ast3stream"]
    assert len(containers) >= 7
    for c in containers:
        with monkeypatch.context() as m:
            check_env(k8s_env(c), m)


def parse_worker(argv: list[str], monkeypatch) -> dict:
    """Run the real ``ast3stream worker`` entry point up to building the faust app (without the
    warm-ups: they compile for the full frame, 45 s of a clean-clone CI run, and are not checked here)."""
    import agents.app
    import ast3stream.front
    import faust.worker
    from ast3stream.sources import strips

    seen: dict = {}
    monkeypatch.setattr(agents.app, "warm_subtraction", lambda cfg: None)
    monkeypatch.setattr(ast3stream.front, "warm_up", lambda cfg: 0.0)
    monkeypatch.setattr(strips, "pool", lambda n: None)
    monkeypatch.setenv("AST3_KAFKA__BOOTSTRAP", "kafka:9092")
    monkeypatch.setattr(agents.app, "make_app", lambda cfg, bootstrap, **kw: seen.update(kw))
    monkeypatch.setattr(faust.worker, "Worker", lambda *a, **kw: type("W", (), {"execute_from_commandline": lambda s: None})())
    args = parser().parse_args(argv[1:])
    args.func(args)
    return seen


def worker_stages(commands: dict[str, list[str]], monkeypatch) -> dict[str, set[str]]:
    stages = {}
    for name, argv in commands.items():
        if argv[1] == "worker":
            kw = parse_worker(argv, monkeypatch)
            assert kw["web_port"], name
            assert set(kw["stages"]) <= ALL_STAGES, f"{name}: unknown stage in {kw['stages']}"
            stages[name] = set(kw["stages"])
    return stages


def test_worker_command_lines_and_stage_split(monkeypatch):
    commands = ast3_commands()
    stages = worker_stages(commands, monkeypatch)
    watchers = [n for n, argv in commands.items() if "--watch" in argv]
    assert watchers == ["compose:watcher", "k8s:ast3stream-watcher:watcher"]
    # compose: watcher + CPU workers + one of the profiles `gpu`/`cpu` run every stage exactly once
    c = {n.split(":")[1]: s for n, s in stages.items() if n.startswith("compose:")}
    assert c["gpu-worker"] == c["cpu-subtraction"] == {"subtraction", "classify"}
    for side in ("gpu-worker", "cpu-subtraction"):
        parts = [c["watcher"], c["cpu-worker"], c[side]]
        assert set().union(*parts) == ALL_STAGES and sum(map(len, parts)) == len(ALL_STAGES)
    k = [s for n, s in stages.items() if n.startswith("k8s:")]
    assert set().union(*k) == ALL_STAGES and sum(map(len, k)) == len(ALL_STAGES)
    services = compose_services()
    assert "replicas" in services["cpu-worker"]["deploy"] and "replicas" not in services["watcher"].get("deploy", {})
    gpu = next(c for w, c in k8s_containers() if w["metadata"]["name"] == "ast3stream-gpu" and c["name"] == "worker")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_topic_set_up_commands():
    commands = ast3_commands()
    topics = {n: argv for n, argv in commands.items() if argv[1] == "topics"}
    assert "compose:topics" in topics and "k8s:ast3stream-topics:topics" in topics
    for argv in topics.values():
        args = parser().parse_args(argv[1:])
        assert args.func is cmd_topics and args.action == "create"
    assert all(s["depends_on"]["topics"]["condition"] == "service_completed_successfully"
               for n, s in compose_services().items() if "worker" in s.get("command", ""))


def test_topic_configs_cover_every_topic_with_retention():
    kafka = KafkaConfig(prefix="site", retention_days=3, alerts_retention_days=60)
    configs = topic_configs(kafka)
    assert list(configs) == all_topics("site")
    days = {name: int(c["retention.ms"]) / DAY_MS for name, c in configs.items()}
    assert days["site.reduction.dip"] == days["site.alert.qip"] == 3
    assert days["site.alerts"] == days["site.alerts.qip"] == days["site.gcn"] == 60
    assert days["site.exposures"] == days["site.exposures.too"] == kafka.exposures_retention_days
    assert days["site.deadletter"] == kafka.deadletter_retention_days
    assert {c["max.message.bytes"] for c in configs.values()} == {str(kafka.max_message_bytes)}


@pytest.mark.broker
def test_topics_create_on_the_broker(broker, monkeypatch, capsys):
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from ast3stream.cli import main

    monkeypatch.delenv("AST3_CONFIG", raising=False)
    monkeypatch.setenv("AST3_KAFKA__PREFIX", "deploytest")
    monkeypatch.setenv("AST3_KAFKA__PARTITIONS", "3")
    monkeypatch.setenv("AST3_KAFKA__ALERTS_RETENTION_DAYS", "60")
    expected = topic_configs(Settings.load().kafka)
    assert main(["topics", "create", "--bootstrap", broker.bootstrap]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(expected)
    assert all(line.endswith("created") for line in lines)
    assert main(["topics", "create", "--bootstrap", broker.bootstrap]) == 0  # idempotent
    assert all(line.endswith("exists") for line in capsys.readouterr().out.splitlines())

    async def read_back():
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(list(expected))
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in expected])
        finally:
            await admin.close()
        partitions = {t["topic"]: len(t["partitions"]) for t in described}
        configs = {res[3]: {e[0]: e[1] for e in res[4]} for r in responses for res in r.resources}
        return partitions, configs

    partitions, configs = asyncio.run(read_back())
    assert partitions == dict.fromkeys(expected, 3)
    for name, config in expected.items():
        assert configs[name]["retention.ms"] == config["retention.ms"], name
    assert configs["deploytest.alerts"]["retention.ms"] == str(60 * DAY_MS)


# ---- the package as a user installs it: a built wheel, light dependencies only ----------------

LIGHT = ("fastavro", "aiokafka", "pydantic", "pydantic-settings")


def _closure(names) -> set[str]:
    """The installed distributions that ``names`` need (their Requires-Dist, markers evaluated)."""
    from importlib.metadata import distribution
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        dist = distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _light_site(target: Path) -> Path:
    """A folder holding only the light dependencies (symlinks into this environment's
    site-packages): what ``pip install ast3stream`` would have fetched, without a network."""
    from importlib.metadata import distribution

    target.mkdir()
    for name in _closure(LIGHT):
        dist = distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (target / top).exists() and top != "__pycache__":
                (target / top).symlink_to(src)
    return target


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv with the wheel built from this tree (``--no-deps``) and the light dependencies."""
    import shutil
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    repo = DEPLOY.parent
    shutil.copytree(repo, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info",
                                                             "__pycache__", "tests", "bench", "deploy"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((root / "dist").glob("ast3stream-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    py = root / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "light-deps.pth").write_text(str(_light_site(root / "light")) + "\n")
    return py


@pytest.mark.broker
def test_the_wheel_reads_alerts_with_light_dependencies_only(wheel_venv, tmp_path, shared_data, broker):
    """``pip install ast3stream`` (no extras): schemas load from the wheel, our alert decodes and
    views, real ZTF alert files show through the CLI, ``alerts listen`` reads both framings from
    the embedded broker; numpy, astropy, torch and faust are absent."""
    import os
    import subprocess
    from functools import partial

    from ast3stream.alerts import build_alert, encode

    run = partial(subprocess.run, capture_output=True, text=True, cwd=tmp_path,
                  env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})   # only what the venv has

    cand = {"x": 10.0, "y": 20.0, "ra": 150.0, "dec": 2.0, "mag": 18.3, "mag_err": 0.05, "snr": 30.0,
            "sign": 1, "rb": 0.9, "object_id": "A3wheel"}
    alert = build_alert(cand, [], None, {}, {"exposure_id": "e1", "lane": "dip", "mjd": 60500.1})
    (tmp_path / "alert.bin").write_bytes(encode(alert))
    code = f"""
import importlib.util, sys
from ast3stream.alerts import decode, view
from ast3stream.alerts.schema import SCHEMA_DIR
assert "site-packages" in str(SCHEMA_DIR), SCHEMA_DIR
v = view(decode(open({str(tmp_path / 'alert.bin')!r}, 'rb').read()))
print(v.survey, v.object_id, round(v.mjd, 3), v.score)
print([m for m in ("numpy", "astropy", "torch", "faust", "sqlalchemy") if importlib.util.find_spec(m)])
"""
    out = run([wheel_venv, "-c", code])
    assert out.returncode == 0, out.stderr
    first, absent = out.stdout.splitlines()
    assert first.split()[:3] == ["ast3stream", "A3wheel", "60500.1"] and absent == "[]"
    cli = wheel_venv.parent / "ast3stream"
    shown = run([cli, "alerts", "show", str(shared_data / "alerts" / "ztf"), "--max", "3"])
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == 4 and " ztf " in shown.stdout
    helped = run([cli, "--help"])
    assert helped.returncode == 0 and "filters" in helped.stdout and "simulate" in helped.stdout
    heavy = run([cli, "simulate", "--out", "x"])
    assert heavy.returncode != 0 and "pip install 'ast3stream[pipeline]'" in heavy.stderr
    from aiokafka import AIOKafkaProducer

    from agents.broker import ensure_topics

    async def produce():
        await ensure_topics(broker.bootstrap, ["wheel.alerts"])
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        try:
            for framing in ("confluent", "container"):
                await producer.send_and_wait("wheel.alerts", encode(alert, framing=framing), key=b"A3wheel")
        finally:
            await producer.stop()

    asyncio.run(produce())
    listened = run([cli, "alerts", "listen", "--bootstrap", broker.bootstrap, "--topic", "wheel.alerts",
                    "--from-beginning", "--format", "json", "--max", "2", "--timeout", "20"])
    assert listened.returncode == 0, listened.stderr
    assert [json.loads(line)["candid"] for line in listened.stdout.splitlines()] == [alert["candid"]] * 2
