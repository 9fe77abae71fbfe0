import pytest

from ast3stream.events import ExposureEvent, MalformedMessage, StageEvent, decode, deadletter


def _exposure(**kw):
    base = dict(exposure_id="ast3_20261126_f001_0001", path="/x/raw.fits", sha256="ab" * 32, size=2880,
                file_closed_at=1.0, detected_at=2.0, field_id="f001", mjd=61000.5, too=True)
    base.update(kw)
    return ExposureEvent(**base)


def test_exposure_roundtrip():
    exp = _exposure()
    assert ExposureEvent.decode(exp.encode()) == exp


def test_stage_event_ids_are_deterministic_and_versioned():
    ev = StageEvent.from_exposure(_exposure(), "qip")
    a = ev.next("reduction", "1", start=10.0)
    b = ev.next("reduction", "1", start=20.0)
    c = ev.next("reduction", "2", start=10.0)
    assert a.event_id == b.event_id != c.event_id
    assert a.versions == {"reduction": "1"}
    assert [t["stage"] for t in a.timings] == ["ingest", "reduction"]
    back = StageEvent.decode(a.encode())
    assert back == a


@pytest.mark.parametrize("data", [b"", b"garbage", b"A3\x01\xff\xff\xff", _exposure().encode()[:-3]])
def test_malformed_messages_raise_a_clear_error(data):
    with pytest.raises(MalformedMessage):
        ExposureEvent.decode(data)


def test_stage_decoder_rejects_an_exposure_event():
    with pytest.raises(MalformedMessage):
        StageEvent.decode(_exposure().encode())


def test_deadletter_keeps_the_original_message():
    original = b"\x00not avro"
    rec = decode(deadletter("t.in", "reduction", "bad frame", "ValueError", key=b"k", value=original), "deadletter")
    assert rec["value"] == original and rec["reason"] == "bad frame" and rec["stage"] == "reduction"
