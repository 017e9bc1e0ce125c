"""Every refusal the HTTPS layer and the router make before a handler runs is
audited once, under the event the route table names and docs/operator-api.md
documents: the test reads the route table (server/svc/routes.c) and the
documentation's table, checks they name the same events, then sends each
route every refusal that applies to it, over its own TLS connection (Python
ssl, raw HTTP/1.1 bytes), and finds exactly one audit row per connection
(the audit row's peer names the client's port):

  no_cert        no client certificate on a device or operator route: 401
  wrong_cert     a device certificate on an operator route, an operator
                 certificate on a device route: 401
  role           a role below the route's: 403, always operator_forbidden
  length         Content-Length over the route's limit: 413 before any body byte
  chunked_upload a chunked body on the upload route: 411
  chunked_over   a chunked body over the limit: 413
  bad_chunk      a malformed chunked body: 400
  bad_head       a head that does not parse (no route known): 400 http_refused
"""

import json
import re
import socket
import ssl
import time

import pytest

import helpers as h
from fw_helpers import https_port, start_fw_cmsd, stop_checked

MAX_BODY = 4096      # http_max_body_bytes of this cmsd
MAX_UPLOAD = 65536   # fw_max_image_bytes: the upload route's limit
ROLES = ["NONE", "SCRAPER", "VIEWER", "OPERATOR", "ADMIN"]
OPERATOR_OF_ROLE = {"SCRAPER": "scraper", "VIEWER": "viewer1", "OPERATOR": "operator1",
                    "ADMIN": "admin1"}
DEVICE = "MON-0001"
PARAMS = {"serial": "MON-9999", "name": "refusal-walk", "id": "999999",
          "fingerprint": "0" * 64, "sha256": "0" * 64}


def route_table():
    """(method, pattern, peer, min_role, upload, event) for each line of svc_routes[]."""
    text = (h.ROOT / "server" / "svc" / "routes.c").read_text()
    table = text[text.index("svc_routes[] = {"):]
    table = table[:table.index("\n};")]
    entry = re.compile(r'\{"(GET|POST)",\s*"([^"]+)",\s*\w+,\s*'
                       r'(ANY|DEVICE|OP\((\w+)\)|OP_UPLOAD\((\w+)\))(?:,\s*"(\w+)")?\}')
    routes = []
    for m in entry.finditer(table):
        peer = m.group(3)
        kind = "any" if peer == "ANY" else "device" if peer == "DEVICE" else "operator"
        role = m.group(4) or m.group(5) or "NONE"
        routes.append((m.group(1), m.group(2), kind, role, peer.startswith("OP_UPLOAD"),
                       m.group(6)))
    assert len(routes) == table.count('{"'), "a route line the test cannot read"
    assert len(routes) > 20
    return routes


def documented_events():
    """{(method, pattern): event} from the table in docs/operator-api.md."""
    text = (h.ROOT / "docs" / "operator-api.md").read_text()
    rows = re.findall(r"^\| `(GET|POST) (/\S*)` \| `(\w+)` \|", text, re.M)
    return {(m, p): e for m, p, e in rows}


def test_route_table_and_docs_name_the_same_events():
    routes = route_table()
    assert {(m, p): e for m, p, _, _, _, e in routes} == documented_events()


class Case:
    def __init__(self, name, route, peer, raw, status, event):
        self.name, self.route, self.peer, self.raw = name, route, peer, raw
        self.status, self.event = status, event
        self.port = None
        self.got = None

    def __repr__(self):
        return "%s %s %s as %s" % (self.name, self.route[0], self.route[1], self.peer)


def head(method, path, extra=""):
    return ("%s %s HTTP/1.1\r\nHost: localhost\r\n%s" % (method, path, extra)).encode()


def cases_for(route, documented):
    """The refusals that apply to route; the event expected is the documented one."""
    method, pattern, kind, role, upload, _ = route
    event = documented[(method, pattern)]
    path = re.sub(r":(\w+)", lambda m: PARAMS[m.group(1)], pattern)
    proper = ("anonymous" if kind == "any" else DEVICE if kind == "device"
              else OPERATOR_OF_ROLE.get(role, "viewer1"))
    empty = head(method, path, "Content-Length: 0\r\n\r\n")
    out = []
    if kind != "any":
        out.append(Case("no_cert", route, "anonymous", empty, 401, event))
        out.append(Case("wrong_cert", route, "operator1" if kind == "device" else DEVICE,
                        empty, 401, event))
    if kind == "operator":
        for lower in ROLES[1:ROLES.index(role)]:
            out.append(Case("role", route, OPERATOR_OF_ROLE[lower], empty, 403,
                            "operator_forbidden"))
    limit = MAX_UPLOAD if upload else MAX_BODY
    out.append(Case("length", route, proper,
                    head(method, path, "Content-Length: %d\r\n\r\n" % (limit + 1)), 413, event))
    chunked = "Transfer-Encoding: chunked\r\n\r\n"
    if upload:
        out.append(Case("chunked_upload", route, proper,
                        head(method, path, chunked) + b"4\r\nabcd\r\n0\r\n\r\n", 411, event))
    else:
        n = MAX_BODY + 1
        out.append(Case("chunked_over", route, proper,
                        head(method, path, chunked) + b"%x\r\n" % n + b"x" * n + b"\r\n0\r\n\r\n",
                        413, event))
        out.append(Case("bad_chunk", route, proper,
                        head(method, path, chunked) + b"zz\r\nabc\r\n0\r\n\r\n", 400, event))
    for k in out:
        k.path = path
    return out


def context(pki, peer):
    if peer == "anonymous":
        return h.client_context(pki)
    if peer.startswith("MON-"):
        cert, key = pki.device(peer)
        return h.client_context(pki, cert, key)
    return h.client_context(pki, pki.path("operators/%s.crt" % peer),
                            pki.path("operators/%s.key" % peer))


def send(c, pki, case, used):
    """Sends case.raw on a fresh connection from a local port no earlier case had
    (rows are told apart by the peer's port: the kernel may hand a port out again
    once closed); returns (local port, HTTP status)."""
    while True:
        raw = socket.create_connection(("127.0.0.1", https_port(c)), timeout=20)
        port = raw.getsockname()[1]
        if port not in used:
            break
        raw.close()  # no byte sent: no TLS, nothing to audit
    used.add(port)
    s = context(pki, case.peer).wrap_socket(raw, server_hostname="localhost")
    try:
        try:
            s.sendall(case.raw)
        except (ConnectionError, ssl.SSLError):
            pass  # refused while sending: the answer is read below
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                b = s.recv(65536)
            except (ConnectionError, ssl.SSLError, socket.timeout):
                break
            if not b:
                break
            data += b
        m = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
        return port, int(m.group(1)) if m else None
    finally:
        s.close()


@pytest.fixture(scope="module")
def walk_cmsd(pki, db):
    c = start_fw_cmsd(pki, db, "cmsd-refusal-walk", http_max_body_bytes=MAX_BODY,
                      fw_max_image_bytes=MAX_UPLOAD)
    yield c
    stop_checked(c)


def actor_of(peer):
    return ("anonymous" if peer == "anonymous" else "device:" + peer if peer.startswith("MON-")
            else "operator:" + peer)


def test_every_refusal_of_every_route_is_audited_once(walk_cmsd, pki, db):
    documented = documented_events()
    cases = [k for r in route_table() for k in cases_for(r, documented)]
    cases.append(Case("bad_head", ("GET", "/healthz"), "anonymous",
                      head("GET", "/healthz", "Bad Name: 1\r\n\r\n"), 400, "http_refused"))
    a0 = db.max_audit_id()
    used = set()
    for k in cases:
        k.port, k.got = send(walk_cmsd, pki, k, used)
    wrong = [(k, k.got) for k in cases if k.got != k.status]
    assert not wrong, "unexpected answers: %s" % wrong

    def rows_by_port():
        out = {}
        for r in db.audit_events(a0):
            port = int(r["peer"].rsplit(":", 1)[1]) if r["peer"] else None
            out.setdefault(port, []).append(r)
        return out

    try:
        h.wait_until(lambda: all(k.port in rows_by_port() for k in cases), 30, 0.2,
                     "an audit row for every refusal")
    except AssertionError:
        pass  # the cases without one are named below
    time.sleep(1.0)  # a second row would be written by now
    rows = rows_by_port()
    bad = []
    for k in cases:
        got = rows.get(k.port, [])
        if len(got) != 1:
            bad.append("%r: %d audit rows %s" % (k, len(got), [r["event"] for r in got]))
            continue
        r = got[0]
        d = json.loads(r["detail"])
        if r["event"] != k.event or d.get("status") != k.status or r["actor"] != actor_of(k.peer):
            bad.append("%r: got %s %s %s, expected %s %s %s" % (
                k, r["event"], d.get("status"), r["actor"], k.event, k.status,
                actor_of(k.peer)))
        elif k.name != "bad_head" and (d.get("method"), d.get("path")) != (k.route[0], k.path):
            bad.append("%r: detail names %s %s" % (k, d.get("method"), d.get("path")))
    assert not bad, "%d of %d refusals:\n%s" % (len(bad), len(cases), "\n".join(bad))
    assert len(cases) > 100
