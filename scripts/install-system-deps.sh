#!/usr/bin/env bash
# Installs the system packages pymesh's tests use, when they are missing:
# build tools, real DNS clients and servers (dig, unbound, dnsmasq, dnsperf),
# TCP and HTTP proxy baselines (haproxy, nginx) and load generators (wrk, h2load), packet capture/netfilter tools, Prometheus, etcd
# and Chromium with its driver (the dashboard's browser test).
# Needs root (apt-get) only when something is missing.
set -euo pipefail
need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
check cmake cmake
check ninja ninja-build
check gcc gcc
check unzip unzip
check ip iproute2
check dig dnsutils
check unbound unbound
check dnsmasq dnsmasq-base
check dnsperf dnsperf
check haproxy haproxy
check nginx nginx-light  # the L7 benchmark's reverse-proxy baseline
check wrk wrk  # HTTP/1.1 load (benchmarks/l7_bench.py)
check h2load nghttp2-client  # HTTP/2 load
check iptables iptables
check nft nftables
check tcpdump tcpdump
check openssl openssl
check taskset util-linux
check prometheus prometheus  # the metrics tests run their own prometheus process on a free loopback port
check etcd etcd-server  # the store tests run their own 3-member cluster on free loopback ports (tests/support/etcd.py)
check chromium chromium  # the dashboard's browser test (tests/e2e/test_dashboard_browser.py), headless
check chromedriver chromium-driver  # selenium drives it through Debian's driver: nothing downloaded
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
for tool in cargo rustc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool: install Rust with rustup" >&2; exit 1; }
done
for comp in clippy rustfmt; do
  grep -q "^$comp" <<<"$(rustup component list --installed 2>/dev/null)" || rustup component add "$comp"
done
