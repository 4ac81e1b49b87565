#!/usr/bin/env bash
# Builds the real-Kubernetes test bed (testbed/: kube-apiserver, etcd, controller-manager,
# scheduler and the process kubelet, one Go binary) into a cache keyed by the Go version,
# the pinned modules (go.sum) and the test bed's own sources, and prints the binary's path.
# A cached build is reused; another key's build is removed. Set CANARYD_TESTBED_CACHE to
# move the cache (default ~/.cache/canaryd-testbed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
    echo "testbed: Go is needed to build the Kubernetes test bed (Go 1.26, see README)" >&2
    exit 1
fi
cd "$root/testbed"
key=$( { go version; cat go.mod go.sum; find . -name '*.go' -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -c1-16)
cache="${CANARYD_TESTBED_CACHE:-$HOME/.cache/canaryd-testbed}"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ ! -x "$cache/$key/testbed" ]; then
    find "$cache" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
    echo "testbed: building kube-apiserver, etcd, kube-controller-manager, kube-scheduler and the process kubelet (first build: ~10 min on 2 cores)" >&2
    started=$(date +%s)
    mkdir -p "$cache/$key"
    go build -trimpath -ldflags='-s -w' -o "$cache/$key/testbed.partial" ./cmd/testbed
    mv "$cache/$key/testbed.partial" "$cache/$key/testbed"
    echo "testbed: built in $(( $(date +%s) - started )) s" >&2
    if [ "${CI:-}" = true ]; then
        # Kubernetes leaves ~7 GB in Go's build cache; on CI only the binary is reused.
        go clean -cache
    fi
fi
echo "$cache/$key/testbed"
