#!/usr/bin/env bash
# Ensure the `buf` CLI (npm package @bufbuild/buf, pinned) under <repo>/.cache/buf.
# Quick when already installed. Prints the absolute path of the buf binary as the
# last line on stdout; everything else goes to stderr.
#
#   BUF=$(infra/scripts/ensure-buf.sh | tail -n1) && (cd protos && "$BUF" lint)
#
# Note: the PyPI package named `buf` is unrelated; this is the npm one.
set -euo pipefail

BUF_VERSION=1.75.0  # checked with `npm view @bufbuild/buf version`

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir="$repo/.cache/buf"

# Prefer the native per-platform binary (no node start-up per call); fall back to
# the package's node launcher if the platform package is laid out differently.
find_buf() {
    local candidate
    for candidate in "$dir"/node_modules/@bufbuild/buf-*/bin/buf "$dir/node_modules/.bin/buf"; do
        if [[ -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

installed_ok() {
    local bin version
    bin=$(find_buf) || return 1
    version=$("$bin" --version 2>/dev/null) || return 1
    [[ "$version" == "$BUF_VERSION" ]]
}

if ! installed_ok; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "ensure-buf: npm is required (Debian: apt-get install -y --no-install-recommends npm)" >&2
        exit 1
    fi
    echo "ensure-buf: installing @bufbuild/buf@$BUF_VERSION into $dir" >&2
    mkdir -p "$dir"
    # --include=optional: the platform binary is an optionalDependency.
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
        --include=optional "@bufbuild/buf@$BUF_VERSION" >&2
    if ! installed_ok; then
        echo "ensure-buf: buf $BUF_VERSION not usable after install (see above)" >&2
        exit 1
    fi
fi

find_buf
