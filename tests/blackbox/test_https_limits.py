"""HTTPS listener limits: a request trickled byte by byte is cut after
http_request_timeout_ms; a keep-alive connection idle between requests is
not (the idle timeout applies there); an oversize header gets 431 JSON."""
import json
import socket
import ssl
import time

import helpers as h


def _tls(c, pki):
    ctx = ssl.create_default_context(cafile=str(pki.root_ca))
    raw = socket.create_connection(("127.0.0.1", int(c.cfg["https_listen"].rsplit(":", 1)[1])),
                                   timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _closed_within(s, seconds):
    """True when the server closes s within seconds (EOF or reset)."""
    s.settimeout(seconds)
    try:
        return s.recv(4096) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except socket.timeout:
        return False


def test_trickled_request_is_cut(cmsd_factory, pki):
    c = cmsd_factory("cmsd-https-slow", http_request_timeout_ms=1500, idle_timeout_ms=60000)
    since = c.log_size()
    s = _tls(c, pki)
    t0 = time.monotonic()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
    closed = False
    for _ in range(8):  # a header line now and then, never the end of the head
        time.sleep(0.5)
        try:
            s.sendall(b"X-Slow: 1\r\n")
        except (ConnectionError, ssl.SSLError, OSError):
            closed = True
            break
        if _closed_within(s, 0.01):
            closed = True
            break
    closed = closed or _closed_within(s, 5)
    s.close()
    assert closed, "a request trickled for 4 s was not cut after 1.5 s"
    assert time.monotonic() - t0 < 8
    c.wait_log(r"event=timeout .*http_request_timeout_ms", since)


def test_keepalive_between_requests_is_not_a_request_timeout(cmsd_factory, pki):
    c = cmsd_factory("cmsd-https-ka", http_request_timeout_ms=1000, idle_timeout_ms=60000)
    s = _tls(c, pki)
    for _ in range(2):
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 503"), head[:40]
        time.sleep(2)  # longer than the request timeout, between requests
    s.close()


def test_oversize_header_gets_431_json(cmsd_factory, pki):
    c = cmsd_factory("cmsd-https-431", http_max_header_bytes=2048)
    s = _tls(c, pki)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
    data = b""
    s.settimeout(10)
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    except (ConnectionError, ssl.SSLError, socket.timeout):
        pass
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), data[:80]
    assert json.loads(body)["error"] == "headers_too_large"
