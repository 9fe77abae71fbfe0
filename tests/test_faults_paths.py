"""Safe paths, the product store and the data-folder lock, without a broker.

Every path component that comes from outside (FITS headers, file names, message fields)
goes through :func:`ast3stream.paths.safe_name`; nothing is ever written outside the data
folder. Product writes are atomic and hold on a full disk; a second stack on the same data
folder refuses to start.
"""
from __future__ import annotations

import errno

import numpy as np
import pytest
from astropy.io import fits

from agents.runner import AlreadyRunning, lock_data_dir
from agents.store import ProductStore
from ast3stream.events import MalformedMessage, StageEvent
from ast3stream.paths import UnsafeName, inside, safe_name
from ast3stream.rawfile import BadHeader, describe

BAD = ["../escape", "../../../tmp/PWNED_FIELD", "/etc/passwd", ".hidden", "a/b", "a\\b", "", "..", ".",
       "x" * 129, "nul\x00byte", "new\nline", "sp ace", "-rf", "é"]
GOOD = ["ast3_20251121_1001_0001", "f001", "S250101x", "ZTF21aaaaaaa", "a.b+c:d-e_f"]


@pytest.mark.parametrize("name", BAD)
def test_an_odd_or_traversing_name_is_refused_with_what_it_was(name):
    with pytest.raises(UnsafeName, match="FIELD .* is not a plain name"):
        safe_name(name, "FIELD")


@pytest.mark.parametrize("name", GOOD)
def test_a_plain_name_is_kept_as_it_is(name, tmp_path):
    assert safe_name(name) == name
    assert inside(tmp_path, "products", name) == (tmp_path / "products" / name).resolve()


def test_a_symlink_inside_the_folder_cannot_lead_out(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeName, match="leads outside"):
        inside(tmp_path / "data", "link", "x")


def _raw(path, **cards):
    fits.PrimaryHDU(np.zeros((16, 16), np.uint16), fits.Header({"MJD-OBS": 61000.5, **cards})).writeto(path)
    return path


class _Ctx:  # describe() asks the database for the ToO list only when the header has a field
    class db:
        namespace = ""

        @staticmethod
        def too_event_for_field(field_id):
            return None


@pytest.mark.parametrize("card", ["FIELD", "EXPID"])
@pytest.mark.parametrize("value", ["../../../outside/PWNED", "/tmp/abs", ".hidden"])
def test_header_values_that_would_name_a_folder_outside_are_rejected(tmp_path, card, value):
    raw = _raw(tmp_path / "raw.fits", **{card: value})
    with pytest.raises(BadHeader, match=card if card == "FIELD" else "exposure id"):
        describe(raw, _Ctx)
    assert describe(_raw(tmp_path / "ok.fits", FIELD="f001"), _Ctx).field_id == "f001"


def test_a_file_name_that_is_not_a_plain_name_is_rejected(tmp_path):
    with pytest.raises(BadHeader, match="exposure id"):
        describe(_raw(tmp_path / "odd name;rm.fits"), _Ctx)


@pytest.mark.parametrize("field", ["exposure_id", "field_id"])
def test_a_message_naming_a_folder_outside_is_malformed(field):
    ev = StageEvent(exposure_id="e1", stage="reduction", stage_version="1", lane="dip", raw_path="/x.fits",
                    file_closed_at=1.0, field_id="f001")
    setattr(ev, field, "../../escape")
    with pytest.raises(MalformedMessage, match=field):
        StageEvent.decode(ev.encode())


def test_the_store_writes_atomically_under_its_root_only(tmp_path):
    store = ProductStore(tmp_path / "products")
    for parts in (("live", "../../escape", "dip", "x.fits"), ("live", "/abs", "x"), ("..", "x")):
        with pytest.raises(UnsafeName):
            store.key(*parts)
    with pytest.raises(UnsafeName):
        store.path("live/../../outside.txt")
    key = store.key("live", "e1", "dip", "bundle.fits")
    store.put(key, lambda p: p.write_text("one"), sync=True)
    store.put(key, lambda p: p.write_text("two"))  # the same key again: replaced, never duplicated
    assert store.flush() == []
    assert store.path(key).read_text() == "two"

    def broken(path):
        path.write_text("half")
        raise ValueError("writer failed")

    store.put(store.key("live", "e1", "dip", "thumb.png"), broken)
    assert store.flush("live/e1/") == ["live/e1/dip/thumb.png"]
    assert sorted(p.name for p in store.path("live/e1/dip").iterdir()) == ["bundle.fits"]  # no half file
    assert not list(tmp_path.glob("**/*.part")) and not (tmp_path / "outside.txt").exists()


def test_a_full_disk_holds_the_write_until_there_is_space(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("agents.store.time.sleep", lambda s: None)
    store = ProductStore(tmp_path)
    attempts = []

    def write(path):
        attempts.append(path)
        if len(attempts) < 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        path.write_text("ok")

    key = store.put(store.key("live", "e1", "dip", "alerts.avro"), write)
    assert store.flush() == [] and store.path(key).read_text() == "ok" and len(attempts) == 3
    assert "no space for live/e1/dip/alerts.avro" in caplog.text and "holding it" in caplog.text


def test_a_write_whose_folder_a_prune_took_in_between_makes_it_again(tmp_path):
    store = ProductStore(tmp_path)
    attempts = []

    def write(path):
        attempts.append(path)
        if len(attempts) == 1:
            path.parent.rmdir()  # the prune of another worker: the folder was empty
        path.write_text("ok")

    key = store.put(store.key("live", "e1", "dip", "bundle.fits"), write, sync=True)
    assert store.path(key).read_text() == "ok" and len(attempts) == 2


def test_a_second_stack_on_the_same_data_folder_refuses(tmp_path):
    held = lock_data_dir(tmp_path / "run.lock")
    with pytest.raises(AlreadyRunning, match=f"{tmp_path} is in use by a running stack"):
        lock_data_dir(tmp_path / "run.lock")
    held.close()
    lock_data_dir(tmp_path / "run.lock").close()  # free again once the first one is gone
