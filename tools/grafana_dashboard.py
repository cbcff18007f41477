"""The cardlink Grafana dashboard (deploy/grafana/cardlink.json), generated so its queries stay
reviewable, and checked against the instruments the code actually defines.

    python tools/grafana_dashboard.py          # rewrite deploy/grafana/cardlink.json
    python tools/grafana_dashboard.py --check  # fail if the file is stale or queries a metric
                                               # no instrument in the code produces

Prometheus names follow the OpenTelemetry collector's translation: dots become underscores,
the unit is appended (s -> _seconds, 1 -> _ratio, {annotations} -> nothing), counters get
_total, histograms _bucket/_sum/_count.
"""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "grafana" / "cardlink.json"
DS = {"type": "prometheus", "uid": "prometheus"}

PANELS = [
    # (title, unit, [(legend, expr)], width)
    ("Goal: share of 取扱高 connected (target 90%)", "percentunit",
     [("share", "max(cardlink_goal_share_ratio)"), ("target", "max(cardlink_goal_target_ratio)")], 8),
    ("Issuers counted toward the goal", "none",
     [("{{cardlink_issuer_id}}", "max by (cardlink_issuer_id) (cardlink_goal_issuer_counts)")], 8),
    ("取扱高 (JPY)", "none",
     [("{{cardlink_goal_volume_state}}", "max by (cardlink_goal_volume_state) (cardlink_goal_volume)")], 8),
    ("Records in per issuer and outcome (/s)", "ops",
     [("{{cardlink_issuer_id}} {{cardlink_outcome}} {{cardlink_reason}}",
       "sum by (cardlink_issuer_id, cardlink_outcome, cardlink_reason) (rate(cardlink_ingest_records_total[1m]))")], 12),
    ("Deliveries per aggregator (/s)", "ops",
     [("{{cardlink_aggregator_id}} {{cardlink_delivery_mode}}",
       "sum by (cardlink_aggregator_id, cardlink_delivery_mode) (rate(cardlink_subscription_deliveries_total[1m]))")], 12),
    ("Publish → deliver latency (live)", "s",
     [("p50", "histogram_quantile(0.5, sum by (le) (rate(cardlink_delivery_latency_seconds_bucket[5m])))"),
      ("p99", "histogram_quantile(0.99, sum by (le) (rate(cardlink_delivery_latency_seconds_bucket[5m])))")], 12),
    ("Connected streams and catch-up readers", "none",
     [("{{cardlink_aggregator_id}}", "sum by (cardlink_aggregator_id) (cardlink_subscription_streams)"),
      ("catch-up readers", "sum(cardlink_subscription_catch_up_readers)")], 12),
    ("View lag (alert above 10 s)", "s",
     [("{{cardlink_view}}", "max by (cardlink_view) (cardlink_view_lag_seconds)")], 12),
    ("gRPC calls: p99 duration by method", "s",
     [("{{rpc_service}}/{{rpc_method}}",
       "histogram_quantile(0.99, sum by (le, rpc_service, rpc_method) (rate(rpc_server_call_duration_seconds_bucket[5m])))")], 12),
    ("Kafka: records sent (/s) and send errors", "ops",
     [("{{messaging_destination_name}} {{error_type}}",
       "sum by (messaging_destination_name, error_type) (rate(messaging_client_sent_messages_total[1m]))")], 12),
    ("Kafka: acknowledgement time p99", "s",
     [("p99", "histogram_quantile(0.99, sum by (le) (rate(messaging_client_operation_duration_seconds_bucket[5m])))")], 12),
    ("Kafka: consumer lag and queued messages", "none",
     [("lag {{cardlink_kafka_client_role}}", "sum by (cardlink_kafka_client_role) (cardlink_kafka_consumer_lag)"),
      ("queued {{cardlink_kafka_client_role}}", "sum by (cardlink_kafka_client_role) (cardlink_kafka_client_queued_messages)")], 12),
    ("Kafka: broker round trip", "s",
     [("{{cardlink_kafka_client_role}}", "max by (cardlink_kafka_client_role) (cardlink_kafka_broker_rtt_seconds)")], 12),
]


def dashboard():
    panels, x, y = [], 0, 0
    for i, (title, unit, targets, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": DS,
            "gridPos": {"h": 8, "w": width, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": expr, "legendFormat": legend}
                        for j, (legend, expr) in enumerate(targets)],
        })
        x += width
    return {
        "uid": "cardlink",
        "title": "cardlink",
        "tags": ["cardlink"],
        "timezone": "browser",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "panels": panels,
    }


def instruments():
    """Base Prometheus names of the instruments the Rust code defines."""
    names = set()
    pattern = re.compile(r'(?:_counter|_histogram|_gauge|gauge)\(\s*"([a-z][a-z0-9_.]+)"')
    for path in list((ROOT / "crates").rglob("*.rs")) + list((ROOT / "services").rglob("*.rs")):
        for name in pattern.findall(path.read_text(encoding="utf-8")):
            names.add(name.replace(".", "_"))
    return names


def check_queries(board, known):
    suffixes = ("", "_total", "_seconds", "_ratio", "_seconds_bucket", "_seconds_sum", "_seconds_count")
    problems = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"\b((?:cardlink|rpc|messaging)_[a-z0-9_]+)\b", target["expr"]):
                if metric.startswith(("cardlink_issuer", "cardlink_aggregator", "cardlink_outcome", "cardlink_reason",
                                      "cardlink_view", "cardlink_delivery_mode", "cardlink_goal_volume_state",
                                      "cardlink_kafka_client_role", "rpc_service", "rpc_method",
                                      "messaging_destination")) and metric not in {
                                          "cardlink_view_lag_seconds", "cardlink_delivery_latency_seconds_bucket"}:
                    continue  # a label, not a metric
                if not any(metric.endswith(s) and metric[: len(metric) - len(s)] in known for s in suffixes if s or metric in known):
                    problems.append(f"{panel['title']}: {metric} is not produced by any instrument")
    return problems


def main():
    board = dashboard()
    text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        problems = check_queries(board, instruments())
        if OUT.read_text(encoding="utf-8") != text:
            problems.append(f"{OUT.relative_to(ROOT)} is stale: run python tools/grafana_dashboard.py")
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            sys.exit(1)
        print(f"dashboard OK ({sum(len(p['targets']) for p in board['panels'])} queries)")
    else:
        OUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
