#!/usr/bin/env python3
"""Checks the manifests `helm template` rendered from charts/cardlink (read on stdin).

Run by scripts/check-deploy.sh in CI: what helm lint cannot know — every service has a
Deployment and a Service, probes on grpc.health, the subscription service scales and has a
disruption budget, Kafka TLS/SASL settings come from Secrets, no secret is rendered empty.
"""

import sys

import yaml

SERVICES = {"registry": 50052, "ingest": 50051, "consent": 50053, "subscription": 50054}


# Services that serve pages: the variable naming their HTTP listener, and the chart's port.
PAGES = {
    "registry": ("CARDLINK_REGISTRY_HTTP_LISTEN", 8081),
    "consent": ("CARDLINK_PAGES_LISTEN", 8080),
    "subscription": ("CARDLINK_SUBSCRIPTION_HTTP_LISTEN", 8082),
}


def fail(message):
    print(f"check_manifests: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind.get("Deployment", [])}
    services = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind.get("Service", [])}
    for name, port in SERVICES.items():
        if name not in deployments or name not in services:
            fail(f"{name}: Deployment and Service expected")
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        if container["args"][:2] != ["serve", name]:
            fail(f"{name}: runs {container['args']}")
        ready, live = container.get("readinessProbe", {}), container.get("livenessProbe", {})
        if ready.get("grpc", {}).get("port") != port or ready["grpc"].get("service", "") != "":
            fail(f"{name}: readiness must be grpc.health on {port} (overall status)")
        if live.get("grpc", {}).get("port") != port or live["grpc"].get("service") != "liveness":
            fail(f"{name}: liveness must be grpc.health service 'liveness' on {port}")
        if "limits" not in container.get("resources", {}):
            fail(f"{name}: no resource limits")
        env = {e["name"]: e for e in container["env"]}
        for required in ["CARDLINK_KAFKA_BOOTSTRAP", "OTEL_SERVICE_NAME"]:
            if required not in env:
                fail(f"{name}: {required} not set")
        password = env.get("CARDLINK_KAFKA__SASL_PASSWORD")
        if password is None or "secretKeyRef" not in password.get("valueFrom", {}):
            fail(f"{name}: the SASL password must come from a Secret")
        if env.get("CARDLINK_KAFKA__SSL_CA_LOCATION", {}).get("value") != "/etc/cardlink/kafka-ca/ca.crt":
            fail(f"{name}: the Kafka CA is not configured")
        if not any(m["mountPath"] == "/etc/cardlink/kafka-ca" for m in container.get("volumeMounts", [])):
            fail(f"{name}: the Kafka CA is not mounted")
        if pod["securityContext"].get("runAsNonRoot") is not True:
            fail(f"{name}: must not run as root")
        svc_ports = [p["port"] for p in services[name]["spec"]["ports"]]
        if port not in svc_ports:
            fail(f"{name}: Service does not expose {port}")
        # The pages each service serves: the listener's variable and the Service port agree.
        if name in PAGES:
            variable, http_port = PAGES[name]
            if env.get(variable, {}).get("value") != f"0.0.0.0:{http_port}":
                fail(f"{name}: {variable} must be 0.0.0.0:{http_port}")
            if http_port not in svc_ports:
                fail(f"{name}: Service does not expose its pages on {http_port}")

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if not any(h["spec"]["scaleTargetRef"]["name"] == deployments["subscription"]["metadata"]["name"] for h in hpas):
        fail("no HorizontalPodAutoscaler for the subscription service")
    if "replicas" in deployments["subscription"]["spec"]:
        fail("the subscription Deployment sets replicas although the HPA owns them")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if not any(p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "subscription" for p in pdbs):
        fail("no PodDisruptionBudget for the subscription service")
    for secret in by_kind.get("Secret", []):
        for key, value in secret.get("stringData", {}).items():
            if key != "issuer-keys" and not value:
                fail(f"secret {key} rendered empty")
    jobs = by_kind.get("Job", [])
    if not any(j["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["topics", "provision"] for j in jobs):
        fail("no topic provisioning job")
    collectors = [d for d in by_kind.get("Service", []) if d["metadata"]["labels"].get("app.kubernetes.io/component") == "otel-collector"]
    if collectors:
        (collector,) = collectors
        endpoint = f"http://{collector['metadata']['name']}:4317"
        for name in SERVICES:
            env = {e["name"]: e.get("value") for e in deployments[name]["spec"]["template"]["spec"]["containers"][0]["env"]}
            if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") != endpoint or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") != "grpc":
                fail(f"{name}: does not export to the release's collector ({endpoint}, grpc)")
            if env.get("CARDLINK_LOG_FORMAT") not in ("json", "text"):
                fail(f"{name}: CARDLINK_LOG_FORMAT not set")
        monitors = by_kind.get("ServiceMonitor", [])
        if not monitors:
            fail("the collector is enabled in the CI values but no ServiceMonitor was rendered")
        selector = monitors[0]["spec"]["selector"]["matchLabels"]
        labels = collector["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            fail("the ServiceMonitor does not select the collector's Service")
        if not any(p["name"] == "metrics" for p in collector["spec"]["ports"]) or monitors[0]["spec"]["endpoints"][0]["port"] != "metrics":
            fail("the ServiceMonitor must scrape the collector's metrics port")
    print(f"check_manifests: {len(docs)} manifests OK")


if __name__ == "__main__":
    main()
