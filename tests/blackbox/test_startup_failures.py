"""cmsd refuses to start, cleanly, whichever start-up step fails: a TLS
context (key not matching the certificate, a CA or CRL that cannot be read
as PEM, the HTTPS context after the MLLP one was made), the firmware keys or
their cache directory, a worker that cannot be made (file descriptors run
out), the database never reachable, the EST CA unusable, a listening port
already taken (MLLP or HTTPS, one or several workers).

Each case: a non-zero exit within its time, a message that names the
problem, and no sanitizer report. Under the sanitizer build (ASAN=1 make
test: build/asan/cmsd with detect_leaks=1) that last check proves that each
step frees what the steps before it made, once: a leak is a LeakSanitizer
report, a double free an AddressSanitizer one."""

import re
import resource
import socket
import subprocess
import time

import pytest

import helpers as h


def run_cmsd(path, timeout=90, preexec_fn=None):
    """Runs cmsd --config path to its exit: (rc, output, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run([str(h.CMSD), "--config", str(path)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout, env=h.cmsd_env(),
                       cwd=str(h.ROOT), stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
    return p.returncode, p.stdout, time.monotonic() - t0


def assert_clean_failure(rc, out, must_name):
    lines = out.splitlines()
    hits = [i for i, ln in enumerate(lines) if any(p.search(ln) for p in h.SANITIZER_PATTERNS)]
    assert not hits, "sanitizer report at a failed start:\n" + "\n".join(lines[hits[0]:][:80])
    assert rc == 1, "exit code %r (want 1) at a failed start:\n%s" % (rc, out)
    assert re.search(must_name, out), "the message does not name the problem (%r):\n%s" % (
        must_name, out)


@pytest.fixture
def start_conf(pki, db, tmp_path):
    """(write(**overrides) -> config path, base config)."""
    cfg = h.base_config(pki, db, h.free_port(), h.free_port())
    cfg["db_connect_timeout_s"] = 20

    def write(**over):
        p = tmp_path / "cmsd-start.conf"
        h.write_config(p, dict(cfg, **over))
        return p
    return write, cfg


def not_pem(tmp_path, name):
    p = tmp_path / name
    p.write_text("this is not PEM\n")
    return str(p)


# Steps before the workers: cmsd exits without touching the database.
# name -> (overrides(pki, tmp_path), what the message must name)
BEFORE_WORKERS = {
    "mllp-tls-key-mismatch": (lambda pki, t: {"tls_key": str(pki.device("MON-0001")[1])},
                              r"TLS configuration"),
    "mllp-tls-device-ca-not-pem": (lambda pki, t: {"tls_device_ca": not_pem(t, "ca.pem")},
                                   r"TLS configuration.*|ca\.pem"),
    # A directory opens for reading (the config check) but cannot be read.
    "mllp-tls-device-ca-directory": (lambda pki, t: {"tls_device_ca": str(t)},
                                     r"TLS configuration"),
    "mllp-tls-crl-not-pem": (lambda pki, t: {"tls_crl": not_pem(t, "crl.pem")},
                             r"TLS configuration"),
    # The MLLP context is made, then the HTTPS one fails.
    "https-tls-operator-ca-not-pem": (lambda pki, t: {"tls_operator_ca": not_pem(t, "op.pem")},
                                      r"TLS configuration \(https\)"),
    # Both TLS contexts are made, then the firmware keys fail.
    "fw-publisher-key-missing": (lambda pki, t: {"fw_publisher_keys": str(t / "nope.pub")},
                                 r"firmware configuration: fw_publisher_keys"),
    "fw-publisher-key-not-pem": (lambda pki, t: {"fw_publisher_keys": not_pem(t, "pub.pem")},
                                 r"firmware configuration: fw_publisher_keys"),
}


@pytest.mark.parametrize("case", list(BEFORE_WORKERS))
def test_failure_before_workers(start_conf, pki, tmp_path, case):
    write, _ = start_conf
    over, must_name = BEFORE_WORKERS[case]
    rc, out, _ = run_cmsd(write(**over(pki, tmp_path)))
    assert_clean_failure(rc, out, must_name)
    assert "event=ready" not in out, out


def test_failure_firmware_cache_dir(start_conf, pki, tmp_path):
    """The distribution key loads, then its cache directory cannot be made
    (its parent is a file): the keys loaded so far are freed."""
    from fw_helpers import dist_key
    write, _ = start_conf
    blocker = tmp_path / "file"
    blocker.write_text("x")
    key, _ = dist_key()
    path = write(fw_distribution_key=str(key), fw_cache_dir=str(blocker / "cache"))
    rc, out, _ = run_cmsd(path)
    assert_clean_failure(rc, out, r"firmware configuration:.*cache")


def test_failure_database_unreachable(start_conf):
    """The workers run and wait for the database, then give up: every worker's
    store and handles are freed."""
    write, _ = start_conf
    path = write(workers=2, db_connect_timeout_s=2, db_reconnect_min_ms=100,
                 db_reconnect_max_ms=500,
                 db_conninfo="host=127.0.0.1 port=%d dbname=cms user=cms connect_timeout=2"
                 % h.free_port())
    rc, out, dt = run_cmsd(path)
    assert_clean_failure(rc, out, r"event=db_unreachable")
    assert "event=ready" not in out, out


def test_failure_dsn_malformed(start_conf):
    """A conninfo libpq cannot parse is an unreachable database: retried, then
    cmsd gives up, naming it."""
    write, _ = start_conf
    path = write(db_connect_timeout_s=2, db_conninfo="this is not a conninfo")
    rc, out, _ = run_cmsd(path)
    assert_clean_failure(rc, out, r"event=db_unreachable")


def test_failure_est_ca_unusable(start_conf, pki, tmp_path):
    """The database is up; a worker loads the EST CA after its MLLP listener,
    and fails: listener, store and ingest state are freed."""
    write, _ = start_conf
    key = tmp_path / "est.key"
    key.write_bytes(pki.server_key.read_bytes())
    key.chmod(0o600)
    path = write(workers=2, est_ca_cert=not_pem(tmp_path, "est-ca.pem"), est_ca_key=str(key))
    rc, out, _ = run_cmsd(path)
    assert_clean_failure(rc, out, r"event=startup_failed")
    assert "event=ready" not in out, out


def held_port(port):
    """A listening socket on 127.0.0.1:port without SO_REUSEPORT: cmsd's bind fails."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen(1)
    return s


@pytest.mark.parametrize("which,workers", [("mllp_listen", 1), ("mllp_listen", 2),
                                           ("https_listen", 1), ("https_listen", 3)])
def test_failure_port_in_use(start_conf, which, workers):
    """The database is up; listening fails on the MLLP port (first step of a
    worker) or on the HTTPS one (after the MLLP listener, EST and firmware
    state were made)."""
    write, cfg = start_conf
    port = int(cfg[which].rsplit(":", 1)[1])
    with held_port(port):
        rc, out, _ = run_cmsd(write(workers=workers))
    assert_clean_failure(rc, out, r"event=listen_failed.*(?i:in use)")
    assert "event=ready" not in out, out


def test_failure_worker_not_made(start_conf):
    """Out of file descriptors while the workers are made: the ones started
    stop, the ones half made (a loop without a thread) are closed, exit 1."""
    write, _ = start_conf
    path = write(workers=48)

    def few_fds():
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
    rc, out, _ = run_cmsd(path, preexec_fn=few_fds)
    assert_clean_failure(rc, out, r"event=startup_failed.*cannot start worker \d+")
    assert "event=ready" not in out, out


# Allocation failures cannot be caused from outside: the sanitizer build has
# CMSD_FAIL_AT=STEP (cmsd.c, fail_at) to fail one step as if memory ran out.
# step -> (workers, needs the database, what the message must name)
INJECTED = {
    "est_limit": (1, False, r"cmsd: out of memory"),
    "workers": (2, False, r"cmsd: out of memory"),
    "main_loop": (2, False, r"event=startup_failed.*main loop"),
    # Worker 0 runs, worker 1 has a loop and handles but no thread, worker 2 none.
    "worker_thread:1": (3, True, r"event=startup_failed.*cannot start worker 1"),
    "worker_thread:0": (2, False, r"event=startup_failed.*cannot start worker 0"),
    "store:1": (2, True, r"event=startup_failed.*store: out of memory"),
    # After worker 1's MLLP listener, EST and revocation state were made.
    "fw_worker:1": (2, True, r"event=startup_failed.*worker 1: firmware: out of memory"),
}


def has_fault_injection():
    return b"CMSD_FAIL_AT" in h.CMSD.read_bytes()


@pytest.mark.parametrize("step", list(INJECTED))
def test_failure_injected(start_conf, step):
    if not has_fault_injection():
        pytest.skip("CMSD_FAIL_AT is compiled into the sanitizer build only (ASAN=1 make test)")
    write, _ = start_conf
    workers, _, must_name = INJECTED[step]
    path = write(workers=workers)
    t0 = time.monotonic()
    env = dict(h.cmsd_env(), CMSD_FAIL_AT=step)
    p = subprocess.run([str(h.CMSD), "--config", str(path)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=90, env=env,
                       cwd=str(h.ROOT), stdin=subprocess.DEVNULL)
    out = p.stdout
    assert "event=fault_injected" in out, "step %s was not reached:\n%s" % (step, out)
    assert_clean_failure(p.returncode, out, must_name)
    assert "event=ready" not in out, out
    assert time.monotonic() - t0 < 60, out
