#!/usr/bin/env bash
# Make sure QGIS's Python (Debian's qgis + python3-qgis) and pytest for it are present.
set -euo pipefail
QPY="${1:-/usr/bin/python3}"
if "$QPY" -c "import qgis.core, pytest" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "QGIS's Python ($QPY) cannot import qgis.core and pytest, and apt-get is not usable here." >&2
  echo "Install them: apt-get install -y --no-install-recommends qgis python3-qgis python3-pytest" >&2
  exit 1
fi
echo "Installing QGIS and pytest for QGIS's Python (apt-get)..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  qgis python3-qgis qgis-providers python3-pytest >/dev/null
"$QPY" -c "import qgis.core, pytest"
