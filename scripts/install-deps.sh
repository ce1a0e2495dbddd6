#!/usr/bin/env bash
# Installs what punie needs to build and test on Debian bookworm (run as root).
set -euo pipefail
packages=(build-essential cmake pkg-config libcurl4-openssl-dev libssl-dev libcjson-dev libmicrohttpd-dev
          clang libclang-rt-14-dev python3 curl openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
