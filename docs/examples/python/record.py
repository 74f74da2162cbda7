#!/usr/bin/env python3
"""Read and write records of the cache tier, from Python with nothing installed.

    python3 record.py put sessions s1 'hello' --ttl-ms 600000
    python3 record.py get sessions s1            # prints hello
    python3 record.py del sessions s1

Each is one request on <prefix>.rec.any, which any cache node answers
(forwarding to the node that serves the key): the record protocol of
docs/PROTOCOL.md, a line of text and the value, answered by "OK <version>
<expires>[ stale]\\n<value>", "NOT_FOUND" or "ERR <code> <message>".
Exit status 0: done; 3: no such record; 4: no_owner or unavailable (try
again); 1: any other failure; 2: bad arguments.
"""

import argparse
import sys

import tinynats


def main():
    ap = argparse.ArgumentParser(description="Get, put or delete a cachebus record.")
    ap.add_argument("op", choices=["get", "put", "del"])
    ap.add_argument("ns")
    ap.add_argument("key", help="1 to 512 bytes, no spaces or control characters")
    ap.add_argument("value", nargs="?", help="the value, for put")
    ap.add_argument("--ttl-ms", type=int, default=0, help="time to live in milliseconds, for put (0: the node's default)")
    args = ap.parse_args()
    if (args.op == "put") != (args.value is not None):
        ap.error("put takes a value; get and del do not")

    line = "%s %s %s" % (args.op, args.ns, args.key)
    if args.op == "put":
        if args.ttl_ms:
            line += " ttl=%d" % args.ttl_ms
        # The value is every byte after the first newline, unchanged.
        request = line.encode() + b"\n" + args.value.encode()
    else:
        request = line.encode()

    try:
        nc = tinynats.connect(name="record.py")
        # A put may be forwarded, then replicated: wait more than twice
        # the nodes' 2s request timeout.
        reply = nc.request(tinynats.subject("rec", "any"), request, timeout=5.0).data
        nc.close()
    except tinynats.NoResponders:
        print("record.py: no cache node is up (no responders)", file=sys.stderr)
        return 4
    except (OSError, tinynats.NATSError) as e:
        print("record.py: %s" % e, file=sys.stderr)
        return 1

    head, _, value = reply.partition(b"\n")
    words = head.decode(errors="replace").split(" ")
    if words[0] == "OK":
        # OK <version> <expires, Unix ms>[ stale]
        if args.op == "get":
            sys.stdout.buffer.write(value)
            sys.stdout.flush()
        else:
            print("%s %s/%s: version %s, expires %s (Unix ms)" % (args.op, args.ns, args.key, words[1], words[2]))
        if "stale" in words[3:]:
            print("record.py: served stale (fallback is on)", file=sys.stderr)
        return 0
    if words[0] == "NOT_FOUND":
        print("record.py: %s/%s: not found" % (args.ns, args.key), file=sys.stderr)
        return 3
    if words[0] == "ERR":
        code = words[1] if len(words) > 1 else "internal"
        print("record.py: %s" % head.decode(errors="replace"), file=sys.stderr)
        return 4 if code in ("no_owner", "unavailable") else 1
    print("record.py: unexpected reply %r" % reply[:80], file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
