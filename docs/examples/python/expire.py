#!/usr/bin/env python3
"""Expire cache entries everywhere, from Python with nothing installed.

    CACHEBUS_NATS_URL=nats://127.0.0.1:4222 python3 expire.py users user:42 user:43
    python3 expire.py users --prefix cart:42: --tag profile
    python3 expire.py http /products/42          # a page cached by the gateways

It sends the Expire payload of docs/PROTOCOL.md to <prefix>.expire.<ns>
as a JetStream publish and waits for the event log's acknowledgement, the
guaranteed path: once this prints "stored at seq N", every cache node,
memo client and gateway drops the entries, at once if connected, else
when it reconnects. Exit status 0: stored; 1: not stored (the reason is
printed); 2: bad arguments.
"""

import argparse
import datetime
import json
import os
import re
import socket
import sys

import tinynats

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def main():
    ap = argparse.ArgumentParser(description="Publish a cachebus expire.")
    ap.add_argument("ns", help="cache namespace, [A-Za-z0-9_-]{1,64}")
    ap.add_argument("keys", nargs="*", help="exact keys to expire")
    ap.add_argument("--prefix", action="append", default=[], help="expire every key starting with this (repeatable)")
    ap.add_argument("--tag", action="append", default=[], help="expire every entry with this tag (repeatable)")
    ap.add_argument("--all", action="store_true", help="expire the whole namespace")
    args = ap.parse_args()
    if not NAME.match(args.ns):
        ap.error("namespace %r: must match [A-Za-z0-9_-]{1,64}" % args.ns)
    if not (args.keys or args.prefix or args.tag or args.all):
        ap.error("give at least one key, --prefix, --tag or --all")
    for k in args.keys + args.prefix + args.tag:
        if not 1 <= len(k.encode()) <= 1024:
            ap.error("%r: keys, prefixes and tags are 1 to 1024 bytes" % k)

    payload = {"v": 1, "origin": origin(),
               "ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    for field, items in (("keys", args.keys), ("prefixes", args.prefix), ("tags", args.tag)):
        if items:
            payload[field] = items
    if args.all:
        payload["all"] = True

    subject = tinynats.subject("expire", args.ns)
    try:
        nc = tinynats.connect(name="expire.py")
        ack = nc.js_publish(subject, json.dumps(payload).encode())
        nc.close()
    except (OSError, tinynats.NATSError) as e:
        print("expire.py: %s: %s" % (subject, e), file=sys.stderr)
        return 1
    print("expire %s stored at seq %d" % (subject, ack["seq"]))
    return 0


def origin():
    """The sender's id, logged by every receiver: [A-Za-z0-9_-]{1,64}."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40].strip("-") or "host"
    return "py-%s-%d" % (host, os.getpid())


if __name__ == "__main__":
    sys.exit(main())
