"""The watcher against the real embedded broker: complete files become events, bad ones dead letters."""
import asyncio
import hashlib
import os
import shutil
import time
from collections import Counter

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from astropy.io import fits
from astropy.table import Table

from agents.broker import ensure_topics
from agents.demo import read_topic
from agents.topics import all_topics, topic
from agents.watcher import Watcher
from ast3stream.events import ExposureEvent, decode
from agents.chain import Resources
from ast3stream.config import WatcherConfig
from waiting import until_async

pytestmark = pytest.mark.broker


def _raw(path, field="f001", seed=0):
    rng = np.random.default_rng(seed)
    fits.PrimaryHDU(rng.integers(0, 1000, (64, 64)).astype(np.uint16),
                    fits.Header({"FIELD": field, "MJD-OBS": 61000.5 + seed})).writeto(path)


async def _run(watcher, seconds):
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


def test_watcher_publishes_complete_files_once_and_dead_letters_bad_ones(broker, settings, tmp_path):
    settings.kafka.prefix = "tw"
    settings.watcher.stable_s = 0.3
    settings.watcher.giveup_s = 1.5
    ctx = Resources(settings)
    ctx.db.store_too_fields("S200101a", Table({"field_id": ["f009"], "prob": [0.5], "cum_prob": [0.5]}))
    watch = settings.watch_dir
    (watch / "night1").mkdir(parents=True)
    _raw(watch / "night1" / "already_there.fits", seed=1)  # present before the watcher starts

    async def scenario():
        await ensure_topics(broker.bootstrap, all_topics("tw"))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        w = Watcher(watch, ctx, producer, "tw")
        task = asyncio.create_task(_run(w, 6.0))
        await asyncio.sleep(0.5)
        _raw(tmp_path / "good.fits", seed=2)
        data = (tmp_path / "good.fits").read_bytes()
        with open(watch / "night1" / "slow.fits", "wb") as fh:  # written in pieces, like a camera
            fh.write(data[:2880])
            fh.flush()
            await asyncio.sleep(0.6)
            fh.write(data[2880:])
        await until_async(lambda: ctx.db.rows("exposures", exposure_id="slow"), "slow.fits to be registered", timeout=60)
        shutil.copyfile(watch / "night1" / "slow.fits", watch / "copy_of_slow.fits")  # same content, later
        _raw(watch / "too.fits", field="f009", seed=3)
        await asyncio.sleep(1.0)
        (watch / "night2").mkdir()
        _raw(watch / "night2" / "slow.fits", seed=4)  # the same exposure id with other pixels
        (watch / "truncated.fits").write_bytes(data[:-2880])
        (watch / "notfits.fits").write_bytes(b"\x89PNG" + b"0" * 5756)
        (watch / "notes.txt").write_text("ignored: not an exposure pattern")
        await task
        await producer.stop()
        raw = await read_topic(broker.bootstrap, topic("tw", "exposures"), 1.0)
        too = await read_topic(broker.bootstrap, topic("tw", "exposures.too"), 1.0)
        dead = await read_topic(broker.bootstrap, topic("tw", "deadletter"), 1.0)
        return raw, too, dead

    raw, too, dead = asyncio.run(scenario())
    names = sorted(ExposureEvent.decode(m.value).exposure_id for m in raw)
    assert names == ["already_there", "slow"]  # the copy has the same sha256: not published twice
    assert [ExposureEvent.decode(m.value).field_id for m in too] == ["f009"]
    reasons = {decode(m.value, "deadletter")["exposure_id"]: decode(m.value, "deadletter")["reason"] for m in dead}
    assert set(reasons) == {"truncated.fits", "notfits.fits", "slow.fits"}
    assert "truncated" in reasons["truncated.fits"]
    assert "not a FITS file" in reasons["notfits.fits"]
    assert "already used by other content" in reasons["slow.fits"]
    assert ctx.db.count("dead_letters") == 3


def test_a_stalled_writer_is_waited_for_and_a_restart_dead_letters_nothing_again(broker, settings, tmp_path):
    settings.kafka.prefix = "tw2"
    settings.watcher.stable_s = 0.3
    settings.watcher.giveup_s = 1.5
    ctx = Resources(settings)
    watch = settings.watch_dir
    watch.mkdir(parents=True)
    for seed in (5, 6):
        _raw(tmp_path / f"e{seed}.fits", seed=seed)
    data = (tmp_path / "e5.fits").read_bytes()

    async def watcher_for(seconds, during=None):
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        try:
            task = asyncio.create_task(_run(Watcher(watch, ctx, producer, "tw2"), seconds))
            if during:
                await during()
            await task
        finally:
            await producer.stop()

    async def stalled_writer():
        with open(watch / "stalled.fits", "wb") as fh:
            for piece in (data[:2880], data[2880:5760]):  # each pause < giveup_s, all of them > giveup_s
                fh.write(piece)
                fh.flush()
                await asyncio.sleep(1.0)
            fh.write(data[5760:])
        (watch / "truncated.fits").write_bytes(data[:-2880])
        shutil.copyfile(watch / "stalled.fits", watch / "copy.fits")

    async def scenario():
        await ensure_topics(broker.bootstrap, all_topics("tw2"))
        await watcher_for(5.0, stalled_writer)
        await watcher_for(3.0)  # a restart looks at every file again
        (watch / "truncated.fits").write_bytes((tmp_path / "e6.fits").read_bytes())  # rewritten whole
        await watcher_for(2.5)
        raw = await read_topic(broker.bootstrap, topic("tw2", "exposures"), 1.0)
        dead = await read_topic(broker.bootstrap, topic("tw2", "deadletter"), 1.0)
        return raw, dead

    raw, dead = asyncio.run(scenario())
    assert sorted(ExposureEvent.decode(m.value).exposure_id for m in raw) == ["stalled", "truncated"]
    assert [decode(m.value, "deadletter")["exposure_id"] for m in dead] == ["truncated.fits"]  # once, not per start
    assert ctx.db.count("dead_letters") == 0  # cleared once the file was complete and published
    assert [r["path"] for r in ctx.db.rows("files", kind="duplicate")] == [str((watch / "copy.fits").resolve())]


def test_with_the_default_settings_a_writer_stalled_30_s_is_waited_for_and_bad_files_are_dead_lettered_once(
        broker, settings, tmp_path):
    """Half a file, a 30 s pause, the rest: published once, never dead-lettered. Bad files left from
    last night (truncated, a copy of it, not FITS, an unreadable date) are dead-lettered once per
    content in the first of three watcher runs and not again after either restart."""
    settings.kafka.prefix = "tw3"
    assert settings.watcher == WatcherConfig()  # the defaults, as a site runs them
    pause = 30.0
    assert settings.watcher.stable_s < pause < settings.watcher.giveup_s
    ctx = Resources(settings)
    watch = settings.watch_dir
    watch.mkdir(parents=True)
    _raw(tmp_path / "e7.fits", seed=7)
    data = (tmp_path / "e7.fits").read_bytes()
    fits.PrimaryHDU(np.zeros((8, 8), np.uint16), fits.Header({"MJD-OBS": "yesterday"})).writeto(watch / "nodate.fits")
    (watch / "truncated.fits").write_bytes(data[:-2880])
    shutil.copyfile(watch / "truncated.fits", watch / "copy_of_truncated.fits")
    (watch / "notfits.fits").write_bytes(b"\x89PNG" + b"0" * 5756)
    bad = sorted(p.name for p in watch.iterdir())
    last_night = time.time() - 12 * 3600
    for name in bad:
        os.utime(watch / name, (last_night, last_night))

    async def watcher_until(condition, what, during=None):
        """Run a watcher until ``condition(watcher)``; bounded well below ``giveup_s``, so a bad file
        left unchanged for hours that waits for ``giveup_s`` again after a start fails the test."""
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        stop = asyncio.Event()
        w = Watcher(watch, ctx, producer, "tw3")
        task = asyncio.create_task(w.run(stop))
        try:
            if during:
                await during()
            await until_async(lambda: task.done() or condition(w), what, timeout=settings.watcher.giveup_s / 2)
        finally:
            stop.set()
            await task
            await producer.stop()

    def decided(*names):
        return lambda w: {watch / n for n in names} <= set(w.done) and not w.pending

    async def stalled_writer():
        with open(watch / "stalled.fits", "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            await asyncio.sleep(pause)
            fh.write(data[len(data) // 2:])

    async def scenario():
        await ensure_topics(broker.bootstrap, all_topics("tw3"))
        await watcher_until(decided(*bad, "stalled.fits"), "the stalled file and the bad ones", stalled_writer)
        for start in ("first", "second"):
            await watcher_until(decided(*bad, "stalled.fits"), f"every file looked at again after the {start} restart")
        raw = await read_topic(broker.bootstrap, topic("tw3", "exposures"), 1.0)
        dead = await read_topic(broker.bootstrap, topic("tw3", "deadletter"), 1.0)
        return raw, dead

    raw, dead = asyncio.run(scenario())
    assert [ExposureEvent.decode(m.value).exposure_id for m in raw] == ["stalled"]  # once, over three starts
    assert [r["exposure_id"] for r in ctx.db.rows("exposures")] == ["stalled"]
    names = [decode(m.value, "deadletter")["exposure_id"] for m in dead]
    assert "stalled.fits" not in names
    content = {name: hashlib.sha256((watch / name).read_bytes()).hexdigest() for name in bad}
    assert Counter(content[n] for n in names) == Counter(set(content.values()))  # each bad content once
    assert sorted(r["exposure_id"] for r in ctx.db.rows("dead_letters")) == sorted(names)


def test_exposures_are_spread_over_the_partitions_in_turn(broker, settings, tmp_path):
    """Two workers share the exposures topic's two partitions: six files give each three,
    whatever their ids hash to (a chain is a whole exposure's work)."""
    settings.kafka.prefix = "tw4"
    settings.watcher.stable_s = 0.2
    ctx = Resources(settings)
    watch = settings.watch_dir
    watch.mkdir(parents=True)

    async def scenario():
        await ensure_topics(broker.bootstrap, all_topics("tw4"), partitions=2)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        for seed in range(6):
            _raw(watch / f"e{seed}.fits", seed=10 + seed)
        stop = asyncio.Event()
        task = asyncio.create_task(Watcher(watch, ctx, producer, "tw4").run(stop))
        await until_async(lambda: ctx.db.count("exposures") == 6 and not ctx.db.count("exposures", status="registered"),
                          "the six files to be published", timeout=120)
        stop.set()
        await task
        await producer.stop()
        return await read_topic(broker.bootstrap, topic("tw4", "exposures"), 1.0)

    raw = asyncio.run(scenario())
    assert sorted(ExposureEvent.decode(m.value).exposure_id for m in raw) == [f"e{s}" for s in range(6)]
    assert sorted(m.partition for m in raw) == [0, 0, 0, 1, 1, 1]


def test_a_file_is_published_when_its_writer_lets_go_not_after_the_stable_time(broker, settings, tmp_path):
    """A closed file and one renamed into the folder are published at once (inotify's close and
    move events); a complete file its writer still holds open waits for the stable time (here
    longer than the test) and goes as soon as it is closed."""
    settings.kafka.prefix = "tw5"
    settings.watcher.stable_s = 600.0
    ctx = Resources(settings)
    watch = settings.watch_dir
    watch.mkdir(parents=True)
    for seed in range(3):
        _raw(tmp_path / f"e{seed}.fits", seed=20 + seed)

    def published(*ids):
        return all(ctx.db.rows("exposures", exposure_id=i, status="ingested") for i in ids)

    async def scenario():
        await ensure_topics(broker.bootstrap, all_topics("tw5"))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        stop = asyncio.Event()
        task = asyncio.create_task(Watcher(watch, ctx, producer, "tw5").run(stop))
        await asyncio.sleep(0.5)  # the observer is watching
        held = open(watch / "e2.fits", "wb")
        held.write((tmp_path / "e2.fits").read_bytes())  # complete, flushed, not closed
        held.flush()
        shutil.copyfile(tmp_path / "e0.fits", watch / "e0.fits")  # written and closed
        shutil.copyfile(tmp_path / "e1.fits", watch / ".e1.fits.part")
        os.replace(watch / ".e1.fits.part", watch / "e1.fits")  # renamed into place
        await until_async(lambda: published("e0", "e1"), "the closed and the renamed file", timeout=60)
        await asyncio.sleep(1.0)
        still_held = not ctx.db.rows("exposures", exposure_id="e2")
        held.close()
        await until_async(lambda: published("e2"), "the held file once closed", timeout=60)
        stop.set()
        await task
        await producer.stop()
        return still_held, await read_topic(broker.bootstrap, topic("tw5", "exposures"), 1.0)

    still_held, raw = asyncio.run(scenario())
    assert still_held
    assert sorted(ExposureEvent.decode(m.value).exposure_id for m in raw) == ["e0", "e1", "e2"]
