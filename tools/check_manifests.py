#!/usr/bin/env python3
"""Checks the manifests `helm template` rendered from charts/cardlink (read on stdin).

Run by scripts/check-deploy.sh in CI: what helm lint cannot know — every service has a
Deployment and a Service, probes on grpc.health, the subscription service scales and has a
disruption budget, Kafka TLS/SASL settings come from Secrets, no secret is rendered empty; every
pod is hardened (non-root, seccomp RuntimeDefault, read-only root, no capabilities, no privilege
escalation, requests and limits); every component has a NetworkPolicy allowing only its own ports
in and DNS, Kafka and telemetry out; topics are provisioned with the configured replication factor
and min.insync.replicas.
"""

import sys

import yaml

SERVICES = {"registry": 50052, "ingest": 50051, "consent": 50053, "subscription": 50054, "history": 50055}


# Services that serve pages: the variable naming their HTTP listener, and the chart's port.
PAGES = {
    "registry": ("CARDLINK_REGISTRY_HTTP_LISTEN", 8081),
    "consent": ("CARDLINK_PAGES_LISTEN", 8080),
    "subscription": ("CARDLINK_SUBSCRIPTION_HTTP_LISTEN", 8082),
}


def fail(message):
    print(f"check_manifests: {message}", file=sys.stderr)
    sys.exit(1)


def check_hardened(what, pod):
    """A pod the chart runs: non-root, seccomp RuntimeDefault, hardened containers with limits."""
    security = pod.get("securityContext", {})
    if security.get("runAsNonRoot") is not True:
        fail(f"{what}: must not run as root")
    if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{what}: seccompProfile must be RuntimeDefault")
    for container in pod["containers"]:
        c = container.get("securityContext", {})
        if c.get("readOnlyRootFilesystem") is not True:
            fail(f"{what}/{container['name']}: root filesystem must be read-only")
        if c.get("allowPrivilegeEscalation") is not False:
            fail(f"{what}/{container['name']}: allowPrivilegeEscalation must be false")
        if c.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{what}/{container['name']}: all capabilities must be dropped")
        resources = container.get("resources", {})
        if "requests" not in resources or "limits" not in resources:
            fail(f"{what}/{container['name']}: resource requests and limits expected")


def check_network_policy(name, policy, ports):
    """Only the component's own ports in (`ports`, empty: nothing); DNS and Kafka among the egress."""
    if set(policy["spec"].get("policyTypes", [])) != {"Ingress", "Egress"}:
        fail(f"{name}: the NetworkPolicy must restrict both ingress and egress")
    allowed_in = sorted(p["port"] for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", []))
    if allowed_in != sorted(ports):
        fail(f"{name}: NetworkPolicy lets in {allowed_in}, expected {sorted(ports)}")
    egress = policy["spec"].get("egress", [])
    egress_ports = {p["port"] for rule in egress for p in rule.get("ports", [])}
    if any(rule == {} for rule in egress):
        fail(f"{name}: NetworkPolicy allows all egress")
    if 53 not in egress_ports or not egress_ports & {9092, 9093}:
        fail(f"{name}: NetworkPolicy egress must allow DNS and Kafka, allows {sorted(egress_ports)}")


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
        if name in ("history", "subscription"):
            store = env.get("CARDLINK_HISTORY_STORE", {})
            if "secretKeyRef" not in store.get("valueFrom", {}):
                fail(f"{name}: the history store URL (it holds the database password) must come from a Secret")
        check_hardened(name, pod)
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
    jobs = [j for j in by_kind.get("Job", []) if j["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["topics", "provision"]]
    if not jobs:
        fail("no topic provisioning job")
    check_hardened("topics job", jobs[0]["spec"]["template"]["spec"])
    args = jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    def flag(name):
        return args[args.index(name) + 1] if name in args else None
    replication, min_insync = flag("--replication-factor"), flag("--min-insync-replicas")
    if replication is None or min_insync is None:
        fail(f"topics job: replication factor and min.insync.replicas must be set ({args})")
    if replication == "3" and min_insync != "2":
        fail(f"topics job: with 3 replicas, min.insync.replicas must default to 2 (got {min_insync})")
    if int(min_insync) > int(replication):
        fail("topics job: min.insync.replicas above the replication factor")

    # One NetworkPolicy per component, only what it needs.
    policies = {d["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component"): d for d in by_kind.get("NetworkPolicy", [])}
    for name, port in SERVICES.items():
        if name not in policies:
            fail(f"{name}: no NetworkPolicy")
        check_network_policy(name, policies[name], [port] + ([PAGES[name][1]] if name in PAGES else []))
    if "topics" not in policies:
        fail("topics job: no NetworkPolicy")
    check_network_policy("topics job", policies["topics"], [])
    collectors = [d for d in by_kind.get("Service", []) if d["metadata"]["labels"].get("app.kubernetes.io/component") == "otel-collector"]
    if collectors:
        (collector,) = collectors
        (collector_deployment,) = [d for d in by_kind.get("Deployment", []) if d["metadata"]["labels"].get("app.kubernetes.io/component") == "otel-collector"]
        check_hardened("otel-collector", collector_deployment["spec"]["template"]["spec"])
        if "otel-collector" not in policies:
            fail("otel-collector: no NetworkPolicy")
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
