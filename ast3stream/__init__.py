"""ast3stream: real-time transient detection for wide-field survey telescopes.

The science library. Every stage is a set of pure functions on arrays, tables and
FITS files; nothing in this package talks to Kafka (that is ``agents/``).
"""
__version__ = "0.1.0"
