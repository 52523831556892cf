#!/usr/bin/env bash
# Print the path of a step-ca binary on the last line of stdout.
#
#   1. `step-ca` on PATH wins (e.g. a release binary installed by an operator).
#   2. Otherwise build <repo>/.cache/step-ca/bin/step-ca from Debian's packaged
#      sources (golang-github-smallstep-certificates-dev, step-ca 0.19) with the
#      Debian Go toolchain (golang-go), in GOPATH mode (GO111MODULE=off,
#      GOPATH=<cache>/gopath:/usr/share/gocode). Debian ships the libraries but not
#      upstream's cmd/step-ca, so infra/step-ca/main.go provides the main package.
#      A no-op when the binary exists and is newer than main.go and this script.
#
# Build progress goes to stderr; only the path goes to stdout.
# Env: STEP_CA_BUILD_FORCE=1 rebuilds; STEP_CA_IGNORE_PATH=1 skips the PATH lookup.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if [[ "${STEP_CA_IGNORE_PATH:-0}" != "1" ]] && command -v step-ca >/dev/null 2>&1; then
    command -v step-ca
    exit 0
fi

main_go="$here/main.go"
cache="$repo/.cache/step-ca"
bin="$cache/bin/step-ca"
gocode=/usr/share/gocode
pkg="$gocode/src/github.com/smallstep/certificates/commands/app.go"

up_to_date() {
    [[ "${STEP_CA_BUILD_FORCE:-0}" != "1" && -x "$bin" && "$bin" -nt "$main_go" \
        && "$bin" -nt "${BASH_SOURCE[0]}" ]]
}
if up_to_date; then
    echo "$bin"
    exit 0
fi

missing=()
command -v go >/dev/null 2>&1 || missing+=("the Go toolchain (golang-go)")
[[ -f "$pkg" ]] || missing+=("step-ca sources ($gocode, golang-github-smallstep-certificates-dev)")
if (( ${#missing[@]} )); then
    {
        echo "build-local.sh: cannot build step-ca: missing ${missing[*]}."
        echo "Run: infra/scripts/ensure-system-deps.sh stepca"
        echo "(or put a step-ca binary on PATH)"
    } >&2
    exit 1
fi

mkdir -p "$cache/bin" "$cache/gopath" "$cache/go-build"
# One build at a time (test workers may all ask at once); a caller that waited finds the
# binary built and uses it.
exec 9>"$cache/.build.lock"
flock 9
if up_to_date; then
    echo "$bin"
    exit 0
fi
echo "build-local.sh: building step-ca from $gocode with $(go version) ..." >&2
start=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# The tree builds without cgo (cgo-only packages such as DataDog/zstd are behind
# build tags), so gcc and libzstd-dev are not needed; the binary is static.
(
    cd "$cache"
    GO111MODULE=off \
    GOPATH="$cache/gopath:$gocode" \
    GOCACHE="$cache/go-build" \
    GOFLAGS= \
    CGO_ENABLED=0 \
    go build -trimpath -o "$tmp" "$main_go"
) >&2
mv -f "$tmp" "$bin"
trap - EXIT
echo "build-local.sh: built $bin in $(( $(date +%s) - start )) s" >&2
echo "$bin"
