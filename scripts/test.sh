#!/usr/bin/env bash
# The test command (README, .ci/run): sets up what the tests need on a fresh machine, then runs
# format, lint, the production (no embedded broker) build check, and every test.
#
# Tests start their own embedded Kafka-compatible broker (tansu, compiled from crates.io) on
# ephemeral ports; nothing else needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep build artefacts outside the clone so a fresh clone on the same machine rebuilds
# incrementally (the first build from empty takes several minutes on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cardlink/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental compilation caches grow by gigabytes per rebuild of the test binaries; a test run
# gains little from them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Python with fastavro (the independent Avro decoder the tests compare against) and grpcio (the
# Python aggregator client example, run against a real service).
venv="$HOME/.cache/cardlink/venv"
if ! "$venv/bin/python" -c 'import fastavro, grpc, grpc_tools, yaml, playwright, PIL' 2>/dev/null; then
  echo "==> setting up $venv (tools/requirements.txt)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tools/requirements.txt
fi
export CARDLINK_PYTHON="$venv/bin/python"

# The end-to-end test's browser: Debian's Chromium (Playwright drives it; it never downloads a
# browser of its own), and a Japanese font so the pages' screenshots show their text.
if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -q 'Noto Sans CJK'; then
  echo "==> installing Chromium and fonts-noto-cjk (Debian)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk >/dev/null
fi

# The history store's tests start throwaway PostgreSQL clusters: Debian's server package.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "==> installing PostgreSQL (Debian)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# The OpenID Provider the sign-in tests run against: panva's oidc-provider (OpenID Certified),
# pinned by tools/oidc-provider/package-lock.json, started by the tests with Node.js.
if [ ! -d tools/oidc-provider/node_modules/oidc-provider ]; then
  echo "==> installing oidc-provider (npm ci, tools/oidc-provider)"
  npm ci --prefix tools/oidc-provider --no-audit --no-fund --loglevel=error
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> production build check (no embedded broker)"
cargo check -p cardlink --no-default-features --locked

echo "==> deployment files (docker-compose, Helm)"
bash scripts/check-deploy.sh

echo "==> cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary, the last often empty).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
