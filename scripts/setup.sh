#!/usr/bin/env bash
# Sets up eigenkv on a fresh Debian 12 machine (as root): installs the build and test
# dependencies with apt-get, builds in Release, and runs the main job on the bundled model.
#   bash scripts/setup.sh              # install + build + main job
#   bash scripts/setup.sh --deps-only  # install only (what CI runs before the tests)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libeigen3-dev libopenblas-openmp-dev libhwy-dev libomp-dev libbz2-dev
  libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin openssh-client
  python3 python3-numpy
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The official OpenAI Node.js client for the server's SDK test (tests/node), pinned by its
# package-lock.json. Only where npm is installed; without it (or without a registry) that one
# test skips and nothing else changes.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/node/node_modules/openai ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error) ||
    echo "setup: npm ci in tests/node failed; the OpenAI client test will skip"
fi
[ "${1:-}" = "--deps-only" ] && exit 0

# The same configuration as scripts/test.sh, so the test command does not rebuild.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DEIGENKV_WERROR=ON
cmake --build build -j"$(nproc)"
bash scripts/demo.sh
