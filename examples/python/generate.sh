#!/usr/bin/env bash
# Generates the Python gRPC code for cardlink's contracts (proto/) into the given directory
# (default: ./gen next to this script). Needs: pip install -r requirements.txt
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/gen}"
python="${PYTHON:-python3}"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I "$here/../../proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here"/../../proto/cardlink/v1/*.proto
echo "generated into $out"
