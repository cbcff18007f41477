#!/usr/bin/env python3
"""Decode cardlink bus records with fastavro, an Avro implementation cardlink does not use.

Reads hex-encoded record values, one per line, on stdin. For each it checks the single-object
marker (C3 01), finds the writer schema among schemas/<record>/v<N>.avsc by its CRC-64-AVRO
fingerprint (computed here by fastavro, not taken from cardlink), decodes the body with that
schema, and prints one JSON object per line: {"schema": "<record>/v<N>", "record": {...}}.

Usage: python3 tools/avro_decode.py SCHEMAS_DIR < values.hex
Exit status 1 if any value does not decode; the error names the line.
"""

import io
import json
import pathlib
import sys

from fastavro import schemaless_reader
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

MARKER = b"\xc3\x01"


def load_schemas(root: pathlib.Path) -> dict:
    by_fingerprint = {}
    for path in sorted(root.glob("*/v*.avsc")):
        parsed = parse_schema(json.loads(path.read_text(encoding="utf-8")), _write_hint=False)
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        by_fingerprint[fp] = (f"{path.parent.name}/{path.stem}", parsed)
    return by_fingerprint


def main() -> int:
    schemas = load_schemas(pathlib.Path(sys.argv[1]))
    failed = False
    for number, line in enumerate(sys.stdin, start=1):
        value = bytes.fromhex(line.strip())
        if value[:2] != MARKER:
            print(f"line {number}: no single-object marker", file=sys.stderr)
            failed = True
            continue
        found = schemas.get(value[2:10])
        if found is None:
            print(f"line {number}: unknown fingerprint {value[2:10].hex()}", file=sys.stderr)
            failed = True
            continue
        name, schema = found
        body = io.BytesIO(value[10:])
        record = schemaless_reader(body, schema, None)
        if body.read():
            print(f"line {number}: trailing bytes after the record", file=sys.stderr)
            failed = True
            continue
        print(json.dumps({"schema": name, "record": record}, default=str, ensure_ascii=False))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
