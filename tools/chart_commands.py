#!/usr/bin/env python3
"""The commands the chart runs, read from `helm template` output on stdin, as JSON.

For every Deployment and Job: the component (label app.kubernetes.io/component), the
container's `args` and its environment with every ConfigMap and Secret reference resolved from
the same rendering. A reference to a Secret the release does not render (a cluster's own, such
as Kafka credentials) is listed under `external` instead, for the caller to decide about; a
required reference to a key the rendering lacks is an error.

    helm template … | python3 tools/chart_commands.py
    {"consent": {"kind": "Deployment", "args": ["serve", "consent"], "env": {…}, "external": […]}, …}
"""

import base64
import json
import sys

import yaml


def fail(message):
    print(f"chart_commands: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {}
    for d in docs:
        if d["kind"] == "Secret":
            values = dict(d.get("stringData", {}))
            for key, value in d.get("data", {}).items():
                values[key] = base64.b64decode(value).decode()
            secrets[d["metadata"]["name"]] = values

    commands = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        pod = d["spec"]["template"]["spec"]
        component = d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for container in pod["containers"]:
            if not container.get("image", "").startswith("ghcr.io/cardlink/cardlink"):
                continue  # not a cardlink container (the collector)
            env, external = {}, []
            for var in container.get("env", []):
                name = var["name"]
                if "value" in var:
                    env[name] = str(var["value"])
                    continue
                source = var.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    ref, store, kind = source["configMapKeyRef"], config_maps, "ConfigMap"
                elif "secretKeyRef" in source:
                    ref, store, kind = source["secretKeyRef"], secrets, "Secret"
                else:
                    fail(f"{component}: {name}: unsupported valueFrom {source}")
                if ref["name"] not in store:
                    if kind == "ConfigMap":
                        fail(f"{component}: {name}: ConfigMap {ref['name']} is not rendered")
                    external.append({"name": name, "secret": ref["name"], "key": ref["key"]})
                    continue
                if ref["key"] in store[ref["name"]]:
                    env[name] = store[ref["name"]][ref["key"]]
                elif not ref.get("optional", False):
                    fail(f"{component}: {name}: {kind} {ref['name']} has no key {ref['key']}")
            commands[component] = {
                "kind": d["kind"],
                "args": [str(a) for a in container.get("args", [])],
                "env": env,
                "external": external,
            }
    json.dump(commands, sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
