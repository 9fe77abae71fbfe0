"""A simulated AST3-3 night: raw frames with overscan, calibrations, catalogues, orbits and truth.

>>> from ast3stream.simulate import simulate_night
>>> night = simulate_night("runs/sim", n_exposures=6, scale=0.1, seed=1)   # doctest: +SKIP
>>> [e.expid for e in night.exposures]                                     # doctest: +SKIP

``plan_night`` writes everything but the science frames; ``write_exposure(night, i)`` renders one
frame at a time (full-size frames are ~300 MB each).
"""
from .night import Exposure, Night, plan_night, simulate_night, write_exposure

__all__ = ["Exposure", "Night", "plan_night", "simulate_night", "write_exposure"]
