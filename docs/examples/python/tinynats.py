"""A NATS client in one page of standard-library Python.

It speaks the NATS client protocol (text over TCP,
https://docs.nats.io/reference/reference-protocols/nats-protocol) with
nothing but a socket: CONNECT, PUB and HPUB (with headers), SUB for one
reply inbox, PING/PONG both ways. That is all a cachebus publisher needs;
see docs/PROTOCOL.md. It does not reconnect and does not speak TLS: use a
NATS library (nats-py) for that.

    nc = tinynats.connect()                       # $CACHEBUS_NATS_URL
    ack = nc.js_publish("cachebus.expire.users", b"user:42")
    print(ack["seq"])
    nc.close()

The connection reads CACHEBUS_NATS_URL (default nats://127.0.0.1:4222;
the first of a comma-separated list), CACHEBUS_NATS_USER,
CACHEBUS_NATS_PASSWORD and CACHEBUS_NATS_TOKEN, as the cachebus commands do.
"""

import json
import os
import queue
import socket
import threading
import urllib.parse
import uuid


class NATSError(Exception):
    """The server refused something (-ERR), or the connection is gone."""


class NoResponders(NATSError):
    """A request nobody subscribes to: the server answered status 503."""


class Timeout(NATSError):
    """No reply came in time: the outcome is unknown."""


class Reply:
    """One message delivered to the inbox: status ("" or "503"...), headers, data."""

    def __init__(self, status, headers, data):
        self.status, self.headers, self.data = status, headers, data


class Conn:
    def __init__(self, url=None, name="cachebus-python-example", timeout=5.0):
        url = url or os.environ.get("CACHEBUS_NATS_URL") or "nats://127.0.0.1:4222"
        u = urllib.parse.urlsplit(url.split(",")[0].strip())
        self._sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), timeout)
        self._rfile = self._sock.makefile("rb")
        self._wlock = threading.Lock()
        info = self._rfile.readline()
        if not info.startswith(b"INFO "):
            raise NATSError("not a NATS server: %r" % info[:80])
        info = json.loads(info[5:])
        if info.get("tls_required"):
            raise NATSError("the server requires TLS: use a NATS library")
        opts = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                "protocol": 1, "lang": "python-stdlib", "version": "1", "name": name}
        user = urllib.parse.unquote(u.username or "") or os.environ.get("CACHEBUS_NATS_USER")
        password = urllib.parse.unquote(u.password or "") or os.environ.get("CACHEBUS_NATS_PASSWORD")
        token = os.environ.get("CACHEBUS_NATS_TOKEN")
        if user:
            opts.update(user=user, **{"pass": password or ""})
        elif token:
            opts["auth_token"] = token
        # The PING after CONNECT is answered by PONG once CONNECT is
        # accepted, or by -ERR (an authorization violation, say).
        self._sock.sendall(b"CONNECT %s\r\nPING\r\n" % json.dumps(opts).encode())
        while True:
            line = self._rfile.readline()
            if not line:
                raise NATSError("connection closed during CONNECT")
            if line.startswith(b"-ERR"):
                raise NATSError(line[5:].strip().decode(errors="replace"))
            if line.startswith(b"PONG"):
                break
            if line.startswith(b"PING"):
                self._send(b"PONG\r\n")
        self._sock.settimeout(None)
        self.max_payload = info.get("max_payload", 1 << 20)
        # One subscription receives every reply: <inbox>.<n> per request.
        self._inbox = "_INBOX." + uuid.uuid4().hex
        self._pending = {}  # reply subject -> queue.Queue
        self._pongs = []  # events waiting for our PINGs, in order
        self._plock = threading.Lock()
        self._n = 0
        self._err = None
        self._send(b"SUB %s.* 1\r\n" % self._inbox.encode())
        threading.Thread(target=self._read, daemon=True).start()

    def _send(self, data):
        with self._wlock:
            self._sock.sendall(data)

    def _read(self):
        """Reads what the server sends: answers its PINGs, hands replies out."""
        err = "connection closed"
        try:
            while True:
                line = self._rfile.readline()
                if not line:
                    break
                if line.startswith(b"PING"):
                    self._send(b"PONG\r\n")
                elif line.startswith(b"PONG"):
                    with self._plock:
                        if self._pongs:
                            self._pongs.pop(0).set()
                elif line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                    # MSG <subject> <sid> [reply] <#bytes>
                    # HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>
                    f = line.split()
                    total = int(f[-1])
                    body = self._rfile.read(total + 2)[:total]
                    status, headers, data = "", {}, body
                    if f[0] == b"HMSG":
                        hlen = int(f[-2])
                        status, headers = _parse_headers(body[:hlen])
                        data = body[hlen:]
                    with self._plock:
                        q = self._pending.get(f[1].decode())
                    if q is not None:
                        q.put(Reply(status, headers, data))
                elif line.startswith(b"-ERR"):
                    e = NATSError(line[5:].strip().decode(errors="replace"))
                    if b"Permissions Violation" not in line:
                        self._err = e  # the server closes the connection next
                    # A refused publish gets no reply: fail the requests
                    # waiting rather than let them time out.
                    with self._plock:
                        for q in self._pending.values():
                            q.put(e)
        except OSError as e:
            err = str(e)
        self._err = self._err or NATSError(err)
        with self._plock:
            for q in self._pending.values():
                q.put(self._err)
            for ev in self._pongs:
                ev.set()

    def _check(self):
        if self._err is not None:
            raise self._err

    def publish(self, subject, payload, reply=None, headers=None):
        """Sends one message: PUB, or HPUB when there are headers."""
        self._check()
        reply_part = b" " + reply.encode() if reply else b""
        if headers:
            h = b"NATS/1.0\r\n" + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()) + b"\r\n"
            self._send(b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject.encode(), reply_part, len(h), len(h) + len(payload), h, payload))
        else:
            self._send(b"PUB %s%s %d\r\n%s\r\n" % (subject.encode(), reply_part, len(payload), payload))

    def request(self, subject, payload, headers=None, timeout=5.0):
        """Publishes with a reply subject and returns the first reply (a Reply)."""
        with self._plock:
            self._n += 1
            reply = "%s.%d" % (self._inbox, self._n)
            q = self._pending[reply] = queue.Queue()
        try:
            self.publish(subject, payload, reply=reply, headers=headers)
            try:
                r = q.get(timeout=timeout)
            except queue.Empty:
                raise Timeout("no reply to %s within %gs" % (subject, timeout)) from None
            if isinstance(r, NATSError):
                raise r
            if r.status == "503":
                raise NoResponders("no responders on %s" % subject)
            return r
        finally:
            with self._plock:
                del self._pending[reply]

    def js_publish(self, subject, payload, msg_id=None, timeout=2.0, attempts=5):
        """Publishes into a JetStream stream and returns its acknowledgement,
        {"stream": ..., "seq": N}: the message is stored. A timeout or no
        responders (no stream leader yet) is retried with the same
        Nats-Msg-Id, which the stream uses to keep one copy. An answer with
        "error" (too large, say) is raised: the message was not stored."""
        headers = {"Nats-Msg-Id": msg_id or uuid.uuid4().hex}
        for attempt in range(1, attempts + 1):
            try:
                ack = json.loads(self.request(subject, payload, headers=headers, timeout=timeout).data)
            except (Timeout, NoResponders):
                if attempt == attempts:
                    raise
                continue
            if "error" in ack:
                e = ack["error"]
                raise NATSError("not stored: %s (code %s, err_code %s)" % (e.get("description"), e.get("code"), e.get("err_code")))
            return ack

    def flush(self, timeout=5.0):
        """Returns once the server has processed everything sent before."""
        ev = threading.Event()
        with self._plock:
            self._pongs.append(ev)
        self._send(b"PING\r\n")
        if not ev.wait(timeout):
            raise Timeout("no PONG within %gs" % timeout)
        self._check()

    def close(self):
        try:
            self.flush()
        finally:
            self._sock.close()


def _parse_headers(block):
    """Splits b"NATS/1.0 503\r\nKey: value\r\n\r\n" into ("503", {"Key": "value"})."""
    lines = block.decode(errors="replace").split("\r\n")
    status = lines[0][len("NATS/1.0"):].strip().split(" ")[0]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip()] = v.strip()
    return status, headers


def connect(url=None, name="cachebus-python-example"):
    return Conn(url, name)


def subject(*parts):
    """A cachebus subject under $CACHEBUS_PREFIX (default "cachebus")."""
    return ".".join((os.environ.get("CACHEBUS_PREFIX") or "cachebus",) + parts)
