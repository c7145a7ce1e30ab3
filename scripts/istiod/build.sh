#!/usr/bin/env bash
# Builds Istio's pilot-discovery (istiod) from Istio's source at a release tag, for the
# istiod interop work (docs/istiod-interop.md). Nothing of Istio's is kept in this repo:
# the source goes to OUT_DIR/istio-src-TAG (or ISTIO_SRC), the binary to OUT_DIR.
#
#   scripts/istiod/build.sh OUT_DIR [TAG]          # TAG defaults to 1.29.0
#   PYMESH_ISTIOD=OUT_DIR/pilot-discovery ...      # what the interop tools and tests look for
#
# Source: a bare clone or mirror of istio/istio given as ISTIO_GIT_DIR (no network needed),
# else a shallow `git clone --branch TAG` of ISTIO_GIT_URL (default: Istio's GitHub
# repository). Go modules come from the Go module proxy (GOPROXY as configured). About
# 6 minutes, 2.4 GB of memory and ~2.6 GB of Go module + build cache on 2 cores; run no
# other heavy build meanwhile.
#
# Environment:
#   ISTIO_GIT_DIR   bare git dir holding TAG (e.g. a `git clone --mirror`)
#   ISTIO_GIT_URL   where to clone from when ISTIO_GIT_DIR is unset
#   ISTIO_SRC       where to put the source (default OUT_DIR/istio-src-TAG; reused if present)
#
# The binary carries the tag and commit in its version (`pilot-discovery version`), set
# with the same -X flags Istio's common/scripts/report_build_info.sh produces.
#
# This is a developer tool: it must not run in CI (it needs Istio's source and minutes of
# build time), and refuses to when CI is set.
set -euo pipefail

if [ -n "${CI:-}" ]; then
  echo "scripts/istiod/build.sh: not run in CI (CI=$CI)" >&2
  exit 2
fi
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
tag=${2:-1.29.0}
src=${ISTIO_SRC:-$out/istio-src-$tag}
url=${ISTIO_GIT_URL:-https://github.com/istio/istio.git}

command -v go >/dev/null || { echo "go is not installed" >&2; exit 1; }

if [ ! -f "$src/go.mod" ]; then
  mkdir -p "$src"
  if [ -n "${ISTIO_GIT_DIR:-}" ]; then
    # e.g. ISTIO_GIT_DIR=/work/.mirror/istio+istio/repo
    git --git-dir="$ISTIO_GIT_DIR" archive "$tag" | tar -x -C "$src"
    commit=$(git --git-dir="$ISTIO_GIT_DIR" rev-parse "$tag^{commit}")
  else
    tmp=$(mktemp -d)
    git clone --quiet --depth 1 --branch "$tag" "$url" "$tmp/istio"
    commit=$(git -C "$tmp/istio" rev-parse HEAD)
    git -C "$tmp/istio" archive HEAD | tar -x -C "$src"
    rm -rf "$tmp"
  fi
  echo "$commit" >"$src/.pymesh-commit"
fi
commit=$(cat "$src/.pymesh-commit" 2>/dev/null || echo unknown)

echo "building pilot-discovery $tag ($commit) from $src into $out" >&2
pkg=istio.io/istio/pkg/version
ldflags="-X $pkg.buildVersion=$tag -X $pkg.buildGitRevision=$commit -X $pkg.buildStatus=Clean"
ldflags+=" -X $pkg.buildTag=$tag -X $pkg.buildHub=local -X $pkg.buildOS=$(go env GOOS) -X $pkg.buildArch=$(go env GOARCH)"
(cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/pilot-discovery" ./pilot/cmd/pilot-discovery)
"$out/pilot-discovery" version --short 2>/dev/null || "$out/pilot-discovery" version
echo "$out/pilot-discovery"
