#!/usr/bin/env bash
# Checks the built wheel is a single abi3 wheel that installs and runs in a
# fresh virtualenv, with no Rust toolchain on PATH (as on a VM).
set -euo pipefail
dist=${1:-dist}
shopt -s nullglob
wheels=("$dist"/pymesh-*.whl)
[ ${#wheels[@]} -ge 1 ] || { echo "no pymesh wheel in $dist" >&2; exit 1; }
newest=$(ls -t "${wheels[@]}")
wheel=${newest%%$'\n'*}
case "$wheel" in
  *-cp310-abi3-*.whl) ;;
  *) echo "wheel is not abi3 for cp310+: $wheel" >&2; exit 1 ;;
esac
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "$wheel"
# List once and search the saved listing: `unzip -l | grep -q` under pipefail fails with
# SIGPIPE (exit 141) whenever grep exits on its match before unzip has written everything.
listing=$(unzip -l "$wheel")
for member in pymesh/_native.pyi pymesh/py.typed pymesh/examples/nametable.json \
  pymesh/examples/mesh/product.yaml pymesh/controlplane/dashboard.html; do
  grep -qF "$member" <<<"$listing" || { echo "wheel lacks $member: $wheel" >&2; exit 1; }
done
# No cargo or rustc reachable: the installed wheel must not need them. `pymesh up` runs the
# whole local mesh on loopback (ports picked at run time, no root, no network).
env -i PATH=/usr/bin:/bin HOME="$venv" timeout 60 "$venv/bin/pymesh" up product >"$venv/out.txt"
grep -q '^5\. registered: WorkloadEntry default/product-vm-127\.0\.0\.3 ' "$venv/out.txt"
grep -q 'product\. 30 IN A 10\.96\.0\.20$' "$venv/out.txt"
grep -q 'pod product-pod-0 (127\.0\.0\.2:' "$venv/out.txt"
grep -q 'vm product-vm (127\.0\.0\.3:' "$venv/out.txt"
echo "wheel ok: $(basename "$wheel")"
