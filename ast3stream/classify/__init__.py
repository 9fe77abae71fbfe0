"""Classifiers: the rotation-invariant real/bogus ResNet-18 (QIP 31x31, DIP 91x91) and the cloud CNN."""
from .realbogus import RealBogus

__all__ = ["RealBogus"]
