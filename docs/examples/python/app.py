#!/usr/bin/env python3
"""An app server that puts itself behind the cachebus gateway, with no sidecar.

    CACHEBUS_NATS_URL=nats://127.0.0.1:4222 python3 app.py --id py-app1 --listen 127.0.0.1:8000
    curl http://127.0.0.1:8080/static/a          # through the gateway (cachebus dev's default port)

It serves HTTP and sends the app heartbeat of docs/PROTOCOL.md,
{"v":1,"id":...,"role":"app","addr":"http://...","state":"up",...}, on
<prefix>.hb.app.<id> every --interval seconds (a core publish: a lost beat
is replaced by the next). Every gateway on the bus adds the app to its
pool on the first beat and routes new sessions to it; an app silent for
CACHEBUS_FAILURE_TIMEOUT (5s) is dropped. On SIGTERM or Ctrl-C it
announces state "gone", which removes it from the pools at once, and
exits. (To drain first, send state "draining" until your sessions end.)

GET /static/<name> is cacheable by the gateway (public, 5 minutes, tagged
"static" and "page-<name>") and counts the requests served into its body,
so that a page fetched fresh is told from a cached copy. Anything else
answers "hello from <id>".
"""

import argparse
import datetime
import json
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tinynats

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def main():
    ap = argparse.ArgumentParser(description="An app server announced to the cachebus gateways by heartbeat.")
    ap.add_argument("--id", required=True, help="member id, [A-Za-z0-9_-]{1,64}, unique among the apps")
    ap.add_argument("--listen", default="127.0.0.1:8000", help="host:port to serve HTTP on")
    ap.add_argument("--addr", help="URL the gateways send requests to (default http://<listen>)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between heartbeats (CACHEBUS_HEARTBEAT_INTERVAL)")
    args = ap.parse_args()
    if not NAME.match(args.id):
        ap.error("--id %r: must match [A-Za-z0-9_-]{1,64}" % args.id)
    host, _, port = args.listen.rpartition(":")

    served = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            with lock:
                served[0] += 1
                n = served[0]
            m = re.fullmatch(r"/static/([^/?]+)", self.path)
            if m:
                body = "static %s, request %d of %s\n" % (m.group(1), n, args.id)
                headers = {"Cache-Control": "public, max-age=300", "Surrogate-Key": "static page-" + m.group(1)}
            else:
                body = "hello from %s\n" % args.id
                headers = {"Cache-Control": "no-store"}
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body.encode())))
            self.send_header("X-Backend", args.id)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, fmt, *a):
            pass

    try:
        nc = tinynats.connect(name="app.py " + args.id)
    except (OSError, tinynats.NATSError) as e:
        print("app.py: NATS: %s" % e, file=sys.stderr)
        return 1
    httpd = ThreadingHTTPServer((host, int(port)), Handler)
    addr = args.addr or "http://%s:%d" % (host, httpd.server_address[1])
    subject = tinynats.subject("hb", "app", args.id)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

    def beat(state):
        hb = {"v": 1, "id": args.id, "role": "app", "addr": addr, "state": state, "started": started,
              "sessions": 0, "load": 0.0, "version": "python-example"}
        nc.publish(subject, json.dumps(hb).encode())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("app %s serving %s, heartbeats on %s" % (args.id, addr, subject), flush=True)
    try:
        while True:
            beat("up")
            if stop.wait(args.interval):
                break
        beat("gone")
        nc.close()  # flushes: the server has the "gone" beat before we exit
    except (OSError, tinynats.NATSError) as e:
        print("app.py: %s" % e, file=sys.stderr)
        return 1
    finally:
        httpd.shutdown()
    print("app %s gone" % args.id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
