"""Cross-match of candidates with galaxies (hosts), known asteroids, variable stars and transients."""
from .crossmatch import crossmatch

__all__ = ["crossmatch"]
