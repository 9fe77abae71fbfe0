"""Cross-match of candidates with galaxy catalogues (hosts) and minor-planet orbits."""
from ..catalogs.galaxies import GalaxyCatalog
from ..catalogs.mpcorb import asteroids_in_field, read_mpcorb
from .crossmatch import crossmatch

__all__ = ["crossmatch", "GalaxyCatalog", "read_mpcorb", "asteroids_in_field"]
