"""GW notices through the real broker: the gw agent fills and retracts the ToO list; junk is dead-lettered."""
import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer

from agents.demo import read_topic
from agents.runner import Stack
from agents.topics import topic
from agents.db import Database
from ast3stream.events import decode
from ast3stream.gw import field_size, make_grid

pytestmark = pytest.mark.broker


def test_gw_agent_stores_ranks_and_retracts_too_fields(broker, settings, shared_data):
    settings.kafka.bootstrap = broker.bootstrap
    settings.kafka.prefix = "gwt"
    fields_csv = settings.paths.data_dir / "fields.csv"
    fields_csv.parent.mkdir(parents=True, exist_ok=True)
    make_grid(*field_size(settings.detector, settings.gw), dec_min=-90, dec_max=90).write(fields_csv, format="ascii.csv")
    settings.paths.fields = fields_csv
    notices = shared_data / "gw" / "skyportal"

    async def send(*values):
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        for v in values:
            await producer.send_and_wait(topic("gwt", "gw"), v)
        await producer.stop()

    def wait(cond, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not cond():
            time.sleep(0.5)
        return cond()

    with Stack(settings, watch=False, stages=["gw"]):
        db = Database.from_settings(settings)
        asyncio.run(send((notices / "igwn_gwalert_preliminary.json").read_bytes(), b"<not a notice"))
        assert wait(lambda: len(db.too_fields()) > 0)
        rows = db.too_fields()
        assert {r["event_id"] for r in rows} == {"MS260605l"}
        probs = [r["prob"] for r in sorted(rows, key=lambda r: r["rank"])]
        assert probs[0] > 0 and all(0 <= p <= 1 for p in probs)
        assert rows[-1]["cum_prob"] <= 1.0 + 1e-9
        dead = [decode(m.value, "deadletter") for m in
                asyncio.run(read_topic(broker.bootstrap, topic("gwt", "deadletter"), 2.0))]
        assert len(dead) == 1 and dead[0]["reason"].startswith("GW notice rejected")
        assert dead[0]["value"] == b"<not a notice"

        asyncio.run(send((notices / "igwn_gwalert_retraction.json").read_bytes()))
        assert wait(lambda: db.too_fields() == [])
