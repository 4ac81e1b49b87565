#!/usr/bin/env bash
# Runs every test of canaryd: formatting, lints, unit tests, the end-to-end suite
# (real canaryd binary, real backends and clients on loopback) and a one-pass smoke
# run of the benchmarks. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# A fresh clone gains nothing from incremental artifacts (3 GB of them on a full build).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

# Tools the tests call. With CI=true a missing tool that cannot be installed fails the run.
need=()
command -v cargo >/dev/null || { echo "cargo is required (rustup)" >&2; exit 1; }
# promtool checks /metrics; prometheus is the real server the PromQL analysis is tested against.
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
command -v python3 >/dev/null || need+=(python3 python3-pip)
# curl and h2load are the real clients of the TLS tests (ALPN h2 included).
command -v curl >/dev/null || need+=(curl)
command -v h2load >/dev/null || need+=(nghttp2-client)
# The real-Kubernetes tests run their cluster in a network namespace of their own.
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, or run as root)" >&2
    exit 1
  fi
fi

# Python packages the tests call (the OpenAPI document is validated by a third party).
if ! python3 -c "import openapi_spec_validator" 2>/dev/null; then
  python3 -m pip install -q openapi-spec-validator
fi
# Kubernetes YAML (CRD, RBAC, examples) is validated against the real API schemas.
command -v kubernetes-validate >/dev/null || python3 -m pip install -q kubernetes-validate
# The Helm chart is rendered by Helm's own engine (helm-python-sdk: Helm's Go SDK as a library,
# no helm binary) and its values checked with jsonschema (tests/helm/chart.py, run by tests/e2e/helm.rs).
python3 -c "import helm_python, jsonschema" 2>/dev/null || python3 -m pip install -q "helm-python-sdk==0.2.2" jsonschema

echo "== kubernetes-validate (CRD, RBAC, examples)"
kubernetes-validate --strict --quiet deploy/crds/*.yaml deploy/*.yaml examples/kubernetes/*.yaml

echo "== the real-Kubernetes test bed (testbed/, Go; built once into a cache keyed by its versions)"
bash scripts/testbed.sh >/dev/null
# gofmt but no `go vet`: vet analyses every one of Kubernetes' ~2,400 dependency packages
# for facts, over 10 min on a cold cache; the build type-checks the test bed already.
unformatted=$(cd testbed && gofmt -l .)
[ -z "$unformatted" ] || { echo "gofmt: not formatted: $unformatted" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
echo "== benches/compare --smoke (the nginx/HAProxy harness, so it cannot rot; figures not judged)"
CANARYD_BIN="$PWD/target/debug/canaryd" CANARYD_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)-debug" \
  bash benches/compare/run.sh --smoke

echo "== analysis-sim --quick (the analysis simulation of docs/analysis.md, so it cannot rot)"
./target/debug/analysis-sim --quick >/dev/null

echo "== cargo test (unit, end-to-end, benchmark smoke)"
cargo test --workspace --all-targets --no-fail-fast
