#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs them.
#   bash tests/run.sh            (extra pytest arguments are passed through)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# Headless Chromium for the browser tests (Debian's package; no browser download).
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

echo "== installing Python packages"
python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt

# The Flink job (pipeline/flink/, docs/FLINK.md): Java 17 and its own venv (about 1 GB; its
# numpy/pyarrow pins clash with the app's), reused when it is already there.
if ! command -v java >/dev/null 2>&1; then
  echo "== installing a Java 17 runtime (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
export KAPPALAB_FLINK_VENV="${KAPPALAB_FLINK_VENV:-$HOME/.cache/kappalab/flink-venv}"
if ! "$KAPPALAB_FLINK_VENV/bin/python" -c "import pyflink" >/dev/null 2>&1 \
    || ! ls "$KAPPALAB_FLINK_VENV"/lib/python3*/site-packages/pyflink/lib/flink-connector-kafka*.jar >/dev/null 2>&1; then
  echo "== installing the Flink venv at $KAPPALAB_FLINK_VENV (a few minutes)"
  python3 -m venv "$KAPPALAB_FLINK_VENV"
  "$KAPPALAB_FLINK_VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -r pipeline/flink/requirements-flink.txt
fi

echo "== running tests"
python3 -m pytest "$@"
