"""What a worker keeps in memory between exposures: resident templates within a byte budget."""
import numpy as np
import pytest

from agents.chain import Resources, frame_bytes
from agents.store import ProductStore
from ast3stream.config import ConfigError, Settings
from ast3stream.image import Frame


def _frame(n: int) -> Frame:
    return Frame(data=np.zeros((n, n), np.float32), mask=np.zeros((n, n), np.uint16))


def _row(i: int) -> dict:
    return dict(exposure_id=f"e{i}", path=f"live/templates/f{i}/e{i}_dip.fits", created_at=float(i),
                maglim=20.0, pcc=1.0, zp=27.0, fwhm_px=3.0)


def test_resident_templates_stay_within_their_byte_budget(tmp_path):
    frame = _frame(500)                      # 1.5 MB: float32 data + uint16 mask
    assert frame_bytes(frame) == 500 * 500 * 6
    cfg = Settings.load(None, paths={"data_dir": tmp_path}, worker={"templates_gb": 3.5 * frame_bytes(frame) / 1e9})
    res = Resources(cfg, store=ProductStore(tmp_path / "products"))
    for i in range(5):
        res.remember(_row(i), "dip", _frame(500))
    assert [t.exposure_id for t in res._templates.values()] == ["e2", "e3", "e4"]   # the 3 newest fit
    res.template(_row(2), "dip")             # used again: now the most recent
    res.remember(_row(5), "dip", _frame(500))
    assert [t.exposure_id for t in res._templates.values()] == ["e4", "e2", "e5"]
    res.remember(_row(6), "dip", _frame(1000))   # larger than the budget alone: kept, the rest dropped
    assert [t.exposure_id for t in res._templates.values()] == ["e6"]


def test_memory_settings_are_validated():
    with pytest.raises(ConfigError, match="worker"):
        Settings.load(None, worker={"templates_gb": 0})
    with pytest.raises(ConfigError, match="worker"):
        Settings.load(None, worker={"subtractions_at_once": 0})


def test_the_subtraction_gate_lets_one_in_at_a_time_quick_lane_first():
    import asyncio

    from agents.chain import Gate

    async def run():
        gate, order, inside = Gate(1), [], []

        async def job(name, priority, hold):
            async with gate.held(priority):
                inside.append(name)
                assert len(inside) == 1
                order.append(name)
                await asyncio.sleep(hold)
                inside.remove(name)

        first = asyncio.create_task(job("dip-1", (1, 0), 0.05))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(job(n, p, 0.0)) for n, p in (("dip-2", (1, 0)), ("qip", (0, 0)))]
        cancelled = asyncio.create_task(job("dip-3", (1, 0), 0.0))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(first, *waiting)
        return order, gate.free

    order, free = asyncio.run(run())
    assert order == ["dip-1", "qip", "dip-2"] and free == 1
