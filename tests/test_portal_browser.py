"""The portal in a real headless Chromium (Debian's ``chromium`` driven by Playwright; no
browser download), served by uvicorn over the survey database of tests/portal_night.py
(real ZTF alerts, the S240116o notice) and the embedded broker: real clicks, real outcomes.
Screenshots go to ``$AST3_ARTEFACTS`` (default: the test's temporary folder)."""
import asyncio
import concurrent.futures
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from agents.chain import Resources
from agents.portal import in_background
from ast3stream.rawfile import describe

import portal_night

pytestmark = [pytest.mark.shared, pytest.mark.broker]
TOKEN = "sesame"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _browser_missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"the portal's browser tests need {reason}", pytrace=False)
    pytest.skip(f"{reason} (`./dev test` installs Debian's chromium when run as root)")


def _in_thread(coro):
    """Run a coroutine on its own loop (Playwright's sync API holds this thread's)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def portal(shared_data, broker, tmp_path_factory):
    from agents.broker import ensure_topics
    from agents.topics import all_topics

    root = tmp_path_factory.mktemp("portal_browser")
    cfg = portal_night.settings(root, portal={"port": 0, "token": TOKEN, "refresh_s": 0.5},
                                kafka={"bootstrap": broker.bootstrap, "prefix": "tpb"},
                                watcher={"stable_s": 0.2, "giveup_s": 0.5, "poll_s": 0.1})
    built = portal_night.build(cfg, shared_data)
    _in_thread(ensure_topics(broker.bootstrap, all_topics("tpb")))
    with in_background(cfg) as url:
        yield cfg, built, url


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _browser_missing("playwright (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        _browser_missing("Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, portal):
    pg = browser.new_page(viewport={"width": 1280, "height": 800})
    pg.set_default_timeout(15000)
    yield pg
    pg.close()


def _shot(page, name: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("AST3_ARTEFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"portal-{name}.png"))


def _loaded(page, selector: str) -> list[int]:
    """The natural widths of the images ``selector`` once every one has finished loading."""
    page.wait_for_function("s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=selector)
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)")


def test_night_page_lists_every_exposure_and_updates_live(page, portal, tmp_path):
    cfg, built, url = portal
    page.goto(url)
    rows = page.locator("#exposures tbody tr[data-exposure]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.exposure)")) == sorted(built["night_exposures"])
    assert all(w > 0 for w in _loaded(page, "img.thumb")) and _loaded(page, "#latency")[0] > 0
    assert page.locator("#summary").inner_text().startswith("4 exposures: 4 alerted; 22 alerts")
    # a new exposure of the night arrives while the page is open: it appears without a reload
    path = cfg.paths.data_dir / "raw" / "ztf_late_arrival.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.int16), fits.Header({"FIELD": built["field"], "MJD-OBS": 60229.44})).writeto(path)
    res = Resources(cfg)
    ev = describe(path, res)
    res.db.register_exposure(ev)
    page.wait_for_selector('tr[data-exposure="ztf_late_arrival"] td.status:text("registered")')
    _shot(page, "night", tmp_path)


def test_an_alerts_four_stamps_load_and_the_filters_work(page, portal, tmp_path):
    cfg, built, url = portal
    page.goto(url)
    page.click("nav >> text=Alerts")
    page.select_option("select[name=not_asteroid]", "true")
    page.select_option("select[name=sort]", "score")
    page.click("#filters button")
    page.wait_for_url("**/candidates?*not_asteroid=true*")
    rows = page.locator("table.candidates tbody tr[data-candidate]")
    assert page.locator("#count").inner_text().startswith(f"{rows.count()} candidates")
    assert rows.count() == 41  # 56 alerts less the 15 known asteroids
    widths = _loaded(page, "table.candidates tbody tr:first-child img.stamp")
    assert len(widths) == 4 and all(w > 0 for w in widths)
    first = rows.first.get_attribute("data-candidate")
    page.click(f'tr[data-candidate="{first}"] >> a[href^="/candidates/"]')
    page.wait_for_selector("h1:text('Candidate')")
    big = _loaded(page, ".big-stamps img")
    assert len(big) == 4 and all(w == 189 for w in big)  # science, template, difference, SNR
    assert "Avro" in page.locator("table.kv").inner_text()
    _shot(page, "candidate", tmp_path)


def test_an_object_page_shows_its_light_curve(page, portal, tmp_path):
    cfg, built, url = portal
    page.goto(f"{url}candidates?object={built['series']}")
    page.locator(f'a[href="/objects/{built["series"]}"]').first.click()
    page.wait_for_selector(f"h1:text('Object {built['series']}')")
    assert _loaded(page, "#lightcurve")[0] > 300
    kinds = page.locator("#photometry tbody td:last-child").all_inner_texts()
    assert kinds.count("detection") == 34 and "upper limit" in kinds
    assert len(_loaded(page, "table.candidates img.stamp")) == 4 * 34
    _shot(page, "object", tmp_path)


def test_the_too_page_shows_the_plan_of_S240116o(page, portal, tmp_path):
    cfg, built, url = portal
    page.goto(url)
    page.click("nav >> text=ToO")
    event = page.locator('section[data-event="S240116o"]')
    assert _loaded(page, "img.plan")[0] > 500
    observed = event.locator("table.fields tr.observed td:nth-child(2)").all_inner_texts()
    assert observed == [built["field"]]
    assert 10 <= event.locator("table.candidates tbody tr[data-candidate]").count() < 24  # inside the 90 % region
    assert "PRELIMINARY" in event.locator("h2").inner_text()
    _shot(page, "too", tmp_path)


def test_a_dead_lettered_file_shows_its_reason_and_retry_republishes_it(page, portal, tmp_path):
    from aiokafka import AIOKafkaProducer

    from agents.demo import read_topic
    from agents.topics import topic
    from agents.watcher import Watcher
    from ast3stream.events import ExposureEvent

    cfg, built, url = portal
    res = Resources(cfg)
    good = tmp_path / "good.fits"
    fits.PrimaryHDU(np.arange(64 * 64, dtype=np.int16).reshape(64, 64),
                    fits.Header({"FIELD": "F00001", "MJD-OBS": 60229.45})).writeto(good)
    late = cfg.watch_dir / "ztf_cut_short.fits"
    late.parent.mkdir(parents=True, exist_ok=True)
    late.write_bytes(good.read_bytes()[:-2880])  # the camera's copy broke off

    async def watch():  # the real watcher, until it has dead-lettered the file
        producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=0)
        await producer.start()
        stop = asyncio.Event()
        task = asyncio.create_task(Watcher(cfg.watch_dir, res, producer, "tpb").run(stop))
        deadline = time.monotonic() + 20
        while not res.db.count("dead_letters", exposure_id=late.name) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await task
        await producer.stop()

    _in_thread(watch())
    page.goto(url)
    page.click("nav >> text=Dead letters")
    row = page.locator("#deadletters tbody tr", has_text=late.name)
    assert "incomplete or invalid FITS file" in row.locator("td.reason").inner_text()
    row.locator("input[name=token]").fill(TOKEN)
    row.locator("button:text('retry')").click()
    assert "still cannot be taken" in page.locator("#err").inner_text()  # nothing was published
    late.write_bytes(good.read_bytes())  # the operator copies the file again
    row = page.locator("#deadletters tbody tr", has_text=late.name)
    row.locator("button:text('retry')").click()  # the token is remembered for this tab
    assert "republished: exposure event of ztf_cut_short.fits" in page.locator("#msg").inner_text()
    _shot(page, "deadletters", tmp_path)
    events = [ExposureEvent.decode(m.value) for m in _in_thread(read_topic(cfg.kafka.bootstrap,
                                                                           topic("tpb", "exposures"), 1.0))]
    assert [e.exposure_id for e in events] == ["ztf_cut_short"] and events[0].path == str(late.resolve())
    assert res.db.rows("exposures", exposure_id="ztf_cut_short")[0]["status"] == "ingested"


def test_a_header_carrying_a_script_renders_as_text(page, portal, tmp_path):
    cfg, built, url = portal
    page.goto(url + "?night=20210630")
    page.click(f"text={built['script_exposure']}")
    cell = page.locator("#header tr", has_text="OBJECT").locator("td").nth(1)
    assert cell.inner_text() == portal_night.SCRIPT
    assert page.evaluate("typeof window.pwned") == "undefined"
