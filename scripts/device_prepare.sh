#!/usr/bin/env bash
# Run here (not on the GPU machine): downloads the Debian packages the build needs
# and the GPU machine's image lacks (it has CUDA, PyTorch, CMake and ninja but
# nothing outside it can be reached), into .debs/ (git-ignored), for the device
# tool to carry. scripts/device_run.sh unpacks them there into a private prefix.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEBS="$ROOT/.debs"
PACKAGES=(libsentencepiece-dev libsentencepiece0 nlohmann-json3-dev libcli11-dev
          libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libgtest-dev
          libgloo-dev                          # headers for c10d's ProcessGroupGloo
          pkgconf pkgconf-bin libpkgconf3)     # in case the image has no pkg-config

mkdir -p "$DEBS"
cd "$DEBS"
rm -f ./*.deb
# apt-get download needs package lists; use a private copy if the system's are missing.
if ! apt-get download "${PACKAGES[@]}" 2>/dev/null; then
  LISTS=$(mktemp -d)
  mkdir -p "$LISTS/partial"
  opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$LISTS")
  apt-get "${opts[@]}" update -q
  apt-get "${opts[@]}" download "${PACKAGES[@]}"
fi
echo "device_prepare: $(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in $DEBS"
