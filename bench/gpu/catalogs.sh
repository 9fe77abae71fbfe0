#!/usr/bin/env bash
# on the lent GPU machine, from the repository root: catalogues at real size (1.4 M orbits, 23 M galaxies)
set -uo pipefail
source .gpu/setup.sh
mkdir -p "$OUT"
timeout 100 python -m bench.catalogs --orbits 1400000 --galaxies 23000000 --threads 16 --json "$OUT/catalogs.json"
