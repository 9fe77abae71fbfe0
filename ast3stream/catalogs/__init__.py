"""Catalogue providers: local files behind one small interface (reference stars, galaxies, orbits)."""
