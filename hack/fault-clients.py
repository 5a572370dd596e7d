#!/usr/bin/env python3
"""Misbehaving clients for hack/fault-test.sh (Python's standard library only).

  fault-clients.py burst HOST PORT CA      malformed and oversized requests; prints a JSON summary of the answers
  fault-clients.py stall HOST PORT CA SECS  holds stalled connections open for SECS seconds; prints a JSON summary
"""
import http.client
import json
import socket
import ssl
import sys
import time


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False  # the certificates name 127.0.0.1 by IP; the point here is the server's behaviour
    return ctx


def review(uid="burst", **request):
    base = {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Namespace"},
            "resource": {"group": "", "version": "v1", "resource": "namespaces"},
            "operation": "UPDATE", "userInfo": {"username": "fault"}, "object": {}, "oldObject": {}}
    base.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base}


def bad_requests():
    """(name, method, path, content type, body): every one must get a 4xx."""
    j = "application/json"
    no_uid = review()
    del no_uid["request"]["uid"]
    yield from [
        ("invalid JSON", "POST", "/validate", j, b'{"kind": "AdmissionReview", '),
        ("not a review", "POST", "/validate", j, b'{"kind": "Pod", "apiVersion": "v1"}'),
        ("no request", "POST", "/mutate", j, b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}'),
        ("no uid", "POST", "/validate", j, json.dumps(no_uid).encode()),
        ("wrong content type", "POST", "/validate", "text/plain", json.dumps(review()).encode()),
        ("GET", "GET", "/validate", None, b""),
        ("unknown path", "POST", "/admit", j, json.dumps(review()).encode()),
        ("deep nesting", "POST", "/validate", j, b"[" * 200_000 + b"]" * 200_000),
        ("not UTF-8", "POST", "/validate", j, b'{"kind": "\xff\xfe"}'),
    ]


def burst(host, port, ca, rounds=40, oversized=5):
    ctx = context(ca)
    # `reconnects`: a kept-alive connection the server had closed (hyper closes one whose request body it did not
    # read to the end, as after a 413); the request is sent again on a new connection. `client_errors`: requests
    # that got no answer even so.
    statuses, errors, reconnects = {}, {}, 0
    cases = list(bad_requests()) * rounds
    cases += [("oversized", "POST", "/validate", "application/json", b" " * (9 << 20))] * oversized
    conn = None
    for name, method, path, ctype, body in cases:
        for attempt in range(2):
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
                headers = {"Content-Type": ctype} if ctype else {}
                conn.request(method, path + "?timeout=10s", body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                kind = "4xx" if 400 <= resp.status < 500 else str(resp.status)
                if kind == "4xx" and json.loads(payload).get("kind") != "Status":
                    kind = "4xx without a Status body"
                statuses[kind] = statuses.get(kind, 0) + 1
                if resp.will_close:
                    conn.close()
                    conn = None
                break
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                if name == "oversized":
                    # The server may answer 413 and close before reading 9 MiB: the write then fails. Fine.
                    statuses["closed while sending an oversized body"] = statuses.get("closed while sending an oversized body", 0) + 1
                    break
                if attempt == 0:
                    reconnects += 1
                else:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    print(json.dumps({"sent": len(cases), "answers": statuses, "reconnects": reconnects, "client_errors": errors}))


def stall(host, port, ca, seconds):
    ctx = context(ca)
    held = {"no_handshake": [], "handshake_no_request": [], "half_request": []}
    for _ in range(100):
        s = socket.create_connection((host, port))
        held["no_handshake"].append(s)
    for _ in range(30):
        held["handshake_no_request"].append(ctx.wrap_socket(socket.create_connection((host, port))))
    for _ in range(20):
        t = ctx.wrap_socket(socket.create_connection((host, port)))
        t.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{")
        held["half_request"].append(t)
    time.sleep(seconds)
    # What the server did with each kind meanwhile: closed it (as it should for the timed-out phases) or not.
    outcome = {}
    for kind, socks in held.items():
        counts = {"closed": 0, "answered": 0, "still open": 0}
        for s in socks:
            s.setblocking(False)
            try:
                data = s.recv(4096)
                counts["closed" if data == b"" else "answered"] += 1
            except (BlockingIOError, ssl.SSLWantReadError):
                counts["still open"] += 1
            except OSError:
                counts["closed"] += 1
            s.close()
        outcome[kind] = counts
    print(json.dumps(outcome))


if __name__ == "__main__":
    mode, host, port, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if mode == "burst":
        burst(host, port, ca)
    elif mode == "stall":
        stall(host, port, ca, float(sys.argv[5]))
    else:
        sys.exit(__doc__)
