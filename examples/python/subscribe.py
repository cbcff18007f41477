#!/usr/bin/env python3
"""A cardlink aggregator client in Python: subscribe, process, remember where you are.

It follows the rules in docs/aggregators.md:
  * resume from the cursor of the last response you processed (kept in a file here);
  * de-duplicate on (issuer_id, event_id): delivery is at-least-once;
  * reconnect on UNAVAILABLE (the service restarted) and RESOURCE_EXHAUSTED/FELL_BEHIND (you
    read too slowly), from your cursor, with backoff;
  * stop on OUT_OF_RANGE (your cursor is older than what the bus retains): start over;
  * with --backfill, start with the consents' history from the history store, then live, on
    one cursor; keep each transaction's highest `version` (a history row that changed since
    comes again, newer), and report backfill progress from the heartbeats.

Each delivery is printed as one JSON line. Generate the gRPC code first (./generate.sh), then:

    CARDLINK_TOKEN=cl1.... python3 subscribe.py --target localhost:50054 --cursor-file cursor.txt
"""

import argparse
import json
import os
import sys
import time
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("CARDLINK_GEN", os.path.join(HERE, "gen")))

import grpc  # noqa: E402
from google.protobuf.json_format import MessageToDict  # noqa: E402

from cardlink.v1 import subscription_pb2, subscription_pb2_grpc  # noqa: E402

RECONNECT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
SEEN_LIMIT = 100_000  # event ids remembered for de-duplication


def reason(error):
    """The stable reason code cardlink puts in the `cardlink-reason` trailer."""
    for key, value in error.trailing_metadata() or ():
        if key == "cardlink-reason":
            return value
    return ""


def load_cursor(path):
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def save_cursor(path, cursor):
    # Write-then-rename, so a crash never leaves half a cursor behind.
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(cursor)
    os.replace(tmp, path)


def event_key(delivery):
    kind = delivery.WhichOneof("event")
    if kind == "transaction":
        return (delivery.transaction.issuer_id, delivery.transaction.event_id)
    if kind == "statement":
        return (delivery.statement.issuer_id, delivery.statement.event_id)
    return None  # consent changes are notices, not events


def item_key(delivery):
    """The transaction or statement a delivery is a state of: its versions replace one another."""
    kind = delivery.WhichOneof("event")
    if kind == "transaction":
        return ("transaction", delivery.transaction.issuer_id, delivery.transaction.issuer_transaction_id)
    if kind == "statement":
        return ("statement", delivery.statement.issuer_id, delivery.statement.statement_id)
    return None


def request(args, cursor):
    kinds = [subscription_pb2.EventKind.Value("EVENT_KIND_" + k.upper()) for k in args.kinds]
    if cursor:
        return subscription_pb2.SubscribeRequest(cursor=cursor, kinds=kinds)
    if args.backfill:
        backfill = subscription_pb2.Backfill(consent_ids=args.backfill_consent)
        return subscription_pb2.SubscribeRequest(backfill=backfill, kinds=kinds)
    return subscription_pb2.SubscribeRequest(from_earliest=args.from_earliest, kinds=kinds)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="localhost:50054", help="the subscription service (host:port)")
    p.add_argument("--token", default=os.environ.get("CARDLINK_TOKEN"), help="aggregator credential (or CARDLINK_TOKEN)")
    p.add_argument("--cursor-file", default="cursor.txt", help="where the position is kept between runs")
    p.add_argument("--from-earliest", action="store_true", help="without a cursor: everything still retained")
    p.add_argument("--backfill", action="store_true", help="without a cursor: the consents' history, then live")
    p.add_argument("--backfill-consent", action="append", default=[], help="with --backfill: only this consent")
    p.add_argument("--kinds", nargs="*", default=[], choices=["transaction", "statement", "consent"])
    p.add_argument("--max-deliveries", type=int, default=0, help="stop after this many (0: run until stopped)")
    p.add_argument("--max-reconnects", type=int, default=0, help="give up after this many in a row (0: never)")
    args = p.parse_args()
    if not args.token:
        p.error("no credential: pass --token or set CARDLINK_TOKEN")

    seen = OrderedDict()
    latest = {}  # item -> highest version kept (a real client keeps this with its data)
    delivered = 0
    backoff, reconnects = 0.5, 0
    metadata = [("authorization", "Bearer " + args.token)]
    with grpc.insecure_channel(args.target) as channel:
        client = subscription_pb2_grpc.SubscriptionStub(channel)
        while True:
            cursor = load_cursor(args.cursor_file)
            try:
                for response in client.Subscribe(request(args, cursor), metadata=metadata):
                    backoff, reconnects = 0.5, 0
                    for delivery in response.deliveries:
                        key = event_key(delivery)
                        if key is not None and key in seen:
                            continue  # a repeat within the at-least-once window
                        if key is not None:
                            seen[key] = None
                            if len(seen) > SEEN_LIMIT:
                                seen.popitem(last=False)
                        item = item_key(delivery)
                        if item is not None and delivery.version <= latest.get(item, -1):
                            continue  # an older (or the same) state of something already kept
                        if item is not None:
                            latest[item] = delivery.version
                        print(json.dumps(MessageToDict(delivery), ensure_ascii=False), flush=True)
                        delivered += 1
                    for progress in response.heartbeat.backfill:
                        state = "complete" if progress.complete else "ended (consent no longer active)"
                        print(f"backfill of {progress.consent_id}: {progress.delivered} delivered, {state}",
                              file=sys.stderr)
                    # Only once everything in the response is processed does its cursor count.
                    if response.cursor:
                        save_cursor(args.cursor_file, response.cursor)
                    if args.max_deliveries and delivered >= args.max_deliveries:
                        return 0
            except grpc.RpcError as e:
                code, why = e.code(), reason(e)
                if code in RECONNECT and (not args.max_reconnects or reconnects < args.max_reconnects):
                    reconnects += 1
                    print(f"reconnecting after {code.name} {why}: {e.details()}", file=sys.stderr)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 30)
                    continue
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    print(f"cursor out of range ({why}): {e.details()}; delete {args.cursor_file} to start again",
                          file=sys.stderr)
                    return 3
                print(f"subscription failed: {code.name} {why}: {e.details()}", file=sys.stderr)
                return 2


if __name__ == "__main__":
    sys.exit(main())
