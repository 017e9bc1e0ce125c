"""cmsd speaks the service manager's notify protocol (Type=notify) to a socket this test
listens on, as systemd would ($NOTIFY_SOCKET, here an abstract socket; $WATCHDOG_USEC):

- READY=1 (with STATUS=) once it serves: the MLLP port accepts at that moment;
- WATCHDOG=1 about every half of $WATCHDOG_USEC while it runs;
- SIGHUP: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, as systemd checks it), then
  READY=1 again;
- SIGTERM: STOPPING=1, then exit 0.
"""

import os
import signal
import socket
import time

import helpers as h


def recv_until(sock, pred, timeout, seen):
    """Datagrams until pred(text) (appending each to seen); returns the matching one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            text = sock.recv(4096).decode()
        except socket.timeout:
            break
        seen.append((time.monotonic(), text))
        if pred(text):
            return text
    raise AssertionError("no such datagram within %ss; got: %r" % (timeout, [t for _, t in seen]))


def test_notify_protocol(cmsd_factory, monkeypatch):
    name = "cms-bb-notify-%d-%d" % (os.getpid(), int(time.time()))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    seen = []
    try:
        c = cmsd_factory("cmsd-notify", start=False)
        c.start(wait=False)
        ready = recv_until(sock, lambda t: t.startswith("READY=1"), 60, seen)
        assert ready.startswith("READY=1\nSTATUS=serving"), ready
        socket.create_connection(("127.0.0.1", c.port), timeout=5).close()  # it listens

        # Watchdog pings every ~0.5 s.
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 2.6:
            recv_until(sock, lambda t: t == "WATCHDOG=1", 2, seen)
            n += 1
        assert n >= 4, seen

        before = time.monotonic() * 1e6
        c.proc.send_signal(signal.SIGHUP)
        rel = recv_until(sock, lambda t: t.startswith("RELOADING=1"), 20, seen)
        after = time.monotonic() * 1e6
        lines = dict(ln.split("=", 1) for ln in rel.split("\n"))
        assert lines["RELOADING"] == "1"
        assert before <= int(lines["MONOTONIC_USEC"]) <= after, (before, lines, after)
        again = recv_until(sock, lambda t: t.startswith("READY=1"), 20, seen)
        assert again.startswith("READY=1"), again

        c.proc.send_signal(signal.SIGTERM)
        recv_until(sock, lambda t: t == "STOPPING=1", 20, seen)
        assert c.proc.wait(30) == 0, c.log_tail()
        # Nothing but the protocol's own assignments was ever sent.
        for _, t in seen:
            for ln in t.split("\n"):
                assert ln.split("=", 1)[0] in ("READY", "STATUS", "WATCHDOG", "RELOADING",
                                               "MONOTONIC_USEC", "STOPPING"), t
    finally:
        sock.close()
