"""cmsd's command line and configuration: --help/--version, a bad config or
an unsafe key file is refused with a clear message and a non-zero exit, an
unreachable database at start is retried (logged) and then cmsd gives up
after db_connect_timeout_s; a signal stops it cleanly."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

import helpers as h


def cmsd_run(args, timeout=60):
    assert h.CMSD.exists(), "%s is missing (make)" % h.CMSD
    p = subprocess.run([str(h.CMSD)] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout, env=h.cmsd_env(),
                       cwd=str(h.ROOT), stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    for rx in h.SANITIZER_PATTERNS:
        assert not rx.search(out), "sanitizer report:\n" + out
    return p.returncode, out


def test_help():
    rc, out = cmsd_run(["--help"])
    assert rc == 0, out
    assert "--config" in out


def test_version():
    rc, out = cmsd_run(["--version"])
    assert rc == 0, out
    assert re.search(r"\d+\.\d+", out), "no version number in: %r" % out


@pytest.fixture
def conf(pki, db, tmp_path):
    """(write(cfg or text) -> path, a valid base config dict)."""
    cfg = h.base_config(pki, db, h.free_port(), h.free_port())

    def write(c):
        p = tmp_path / "cmsd.conf"
        if isinstance(c, str):
            p.write_text(c)
        else:
            h.write_config(p, c)
        return p
    return write, cfg


def cfg_text(cfg, extra=""):
    tmp = []
    for k, v in cfg.items():
        if isinstance(v, str):
            v = '"%s"' % v
        tmp.append("%s = %s" % (k, v))
    return "\n".join(tmp) + "\n" + extra


BAD = {
    # name -> (text transform, what the message must name)
    "unknown-key": (lambda c: cfg_text(c, "colour = blue\n"), r"colour"),
    "duplicate-key": (lambda c: cfg_text(c, "workers = 2\n"), r"workers"),
    "bad-number": (lambda c: cfg_text(dict(c, max_connections="lots")).replace(
        'max_connections = "lots"', "max_connections = lots"), r"max_connections"),
    "missing-required": (lambda c: cfg_text({k: v for k, v in c.items() if k != "tls_cert"}),
                         r"tls_cert"),
    "bad-log-level": (lambda c: cfg_text(dict(c, log_level="chatty")), r"log_level|chatty"),
    "no-equals": (lambda c: cfg_text(c, "just some words\n"), r":\d+"),
    # Listeners set SO_REUSEPORT: both would bind, and split the connections.
    "same-listen": (lambda c: cfg_text(dict(c, https_listen=c["mllp_listen"])),
                    r"mllp_listen and https_listen must not share a port"),
    "wildcard-same-port": (lambda c: cfg_text(dict(
        c, https_listen="0.0.0.0:" + c["mllp_listen"].rsplit(":", 1)[1])),
        r"mllp_listen and https_listen must not share a port"),
    "v6-wildcard-same-port": (lambda c: cfg_text(dict(
        c, https_listen="[::]:" + c["mllp_listen"].rsplit(":", 1)[1])),
        r"mllp_listen and https_listen must not share a port"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_refused(conf, case):
    write, cfg = conf
    make, must_name = BAD[case]
    path = write(make(cfg))
    rc, out = cmsd_run(["--config", path], timeout=60)
    assert rc != 0, "cmsd accepted a bad config (%s):\n%s" % (case, out)
    assert re.search(must_name, out), "message does not name the problem (%s): %r" % (case, out)
    assert "cmsd.conf" in out, "message does not name the file: %r" % out
    if case in ("unknown-key", "duplicate-key", "no-equals", "bad-number"):
        # "file:line: reason" (config.h)
        assert re.search(r"cmsd\.conf:\d+", out), "no file:line in %r" % out


def test_listeners_on_one_port_but_different_hosts_accepted(conf):
    """127.0.0.1:P and 127.0.0.2:P are different sockets: not an overlap."""
    write, cfg = conf
    port = cfg["mllp_listen"].rsplit(":", 1)[1]
    path = write(dict(cfg, https_listen="127.0.0.2:" + port))
    rc, out = cmsd_run(["--check-config", path])
    assert rc == 0 and "is valid" in out, out


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_refused(conf, pki, tmp_path, mode):
    write, cfg = conf
    key = tmp_path / "server.key"
    shutil.copy(pki.server_key, key)
    os.chmod(key, mode)
    path = write(dict(cfg, tls_key=str(key)))
    rc, out = cmsd_run(["--config", path])
    assert rc != 0, "cmsd started with a key file of mode %o:\n%s" % (mode, out)
    assert "server.key" in out and re.search(r"(?i)permission|mode|readable|accessible|group|world",
                                             out), out


def test_missing_key_file_refused(conf, tmp_path):
    write, cfg = conf
    path = write(dict(cfg, tls_key=str(tmp_path / "nope.key")))
    rc, out = cmsd_run(["--config", path])
    assert rc != 0, out
    assert "nope.key" in out, out


def test_key_not_matching_cert_refused(conf, pki):
    write, cfg = conf
    _, other_key = pki.device("MON-0001")
    path = write(dict(cfg, tls_key=str(other_key)))
    rc, out = cmsd_run(["--config", path])
    assert rc != 0, out


def test_unreachable_database_retried_then_exit(conf, pki):
    write, cfg = conf
    dead = h.free_port()
    cfg = dict(cfg, db_conninfo="host=127.0.0.1 port=%d dbname=cms user=cms connect_timeout=2"
               % dead, db_connect_timeout_s=4, db_reconnect_min_ms=100, db_reconnect_max_ms=1000)
    path = write(cfg)
    t0 = time.monotonic()
    proc = subprocess.Popen([str(h.CMSD), "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=h.cmsd_env(),
                            cwd=str(h.ROOT), stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        # Not serving while it has no database.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(cfg["mllp_listen"].rsplit(":", 1)[1])),
                                     timeout=2).close()
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    dt = time.monotonic() - t0
    assert proc.returncode != 0, "cmsd exited 0 without a database:\n" + out
    assert dt >= 3.5, "gave up after %.1fs, before db_connect_timeout_s=4:\n%s" % (dt, out)
    retries = [ln for ln in out.splitlines()
               if re.search(r"level=(warn|error)", ln) and re.search(
                   r"(?i)db|database|postgres|connect", ln)]
    assert len(retries) >= 2, "retries not logged:\n" + out
    assert re.search(r"(?i)retry|retrying|reconnect|again|backoff", out), out
    assert re.search(r"(?i)giv(e|ing) up|timed? ?out|unreachable|unavailable", out), out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(cmsd_factory, pki, sig):
    c = cmsd_factory("cmsd-signal")
    with h.device_client(pki, c.port, "MON-0001") as cl:
        ack = cl.request(h.pcd01("MON-0001", h.unique("SIG"), patient=h.unique("PT")))
        assert ack.code == "AA", ack
    c.proc.send_signal(sig)
    rc = c.proc.wait(30)
    assert rc == 0, "exit code %s after %s:\n%s" % (rc, sig.name, c.log_tail())
