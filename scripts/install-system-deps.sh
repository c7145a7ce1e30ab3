#!/usr/bin/env bash
# Installs the system packages pymesh's tests use, when they are missing.
# Needs root (apt-get) only when something is missing.
set -euo pipefail
need=()
for pair in cmake:cmake ninja:ninja-build gcc:gcc unzip:unzip; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
for tool in cargo rustc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool: install Rust with rustup" >&2; exit 1; }
done
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt || true
