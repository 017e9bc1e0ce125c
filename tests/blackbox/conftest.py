"""Session fixtures for the black-box suite: test PKI, private PostgreSQL
cluster, fresh database with migrations and registered devices, a shared
cmsd, and a factory for cmsd instances with their own config (tests that
kill it or need small limits).

Run: /usr/bin/python3 -m pytest -q tests/blackbox   (CMS_BUILD=build/asan for
the sanitizer build: any ASan/UBSan report in cmsd's log fails the test).
"""

import contextlib
import fcntl
import shutil
import sys
import time
import warnings

import pytest

import helpers as h

# Devices in the registry for the whole session.
ACTIVE = ["MON-0001", "MON-0002", "MON-0003"]
EUI64 = "0012345678ABCDEF"          # MON-0003's extra identifier
EUI64_DEVICE = "MON-0003"
UNREGISTERED = "MON-0099"           # valid cert from the device CA, not in the registry
PENDING = "MON-0097"                # registered, status pending
REVOKED = "MON-0096"                # registered, status revoked
TO_REVOKE = "MON-0098"              # active at first; a test revokes it
# mkpki.sh test also makes bad/unknown (CN=MON-9999, not registered either).


@pytest.fixture(scope="session", autouse=True)
def _fresh_run_dir():
    """One run at a time per build dir (a second `make test` waits for the
    first instead of stopping its PostgreSQL). Logs and configs of the
    previous run go; the PKI and the cluster are reused."""
    h.RUN.mkdir(parents=True, exist_ok=True)
    lock = open(h.RUN / ".lock", "w")
    deadline = time.monotonic() + 1800
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.exit("another black-box run holds %s/.lock" % h.RUN, returncode=3)
            sys.stderr.write("waiting for another black-box run using %s\n" % h.RUN)
            time.sleep(5)
    shutil.rmtree(h.RUN / "logs", ignore_errors=True)
    for conf in h.RUN.glob("*.conf"):
        conf.unlink()
    (h.RUN / "logs").mkdir(parents=True, exist_ok=True)
    yield
    lock.close()


@pytest.fixture(scope="session")
def pki():
    p = h.make_pki(h.RUN / "pki")
    p.mint("MON-", 96, 4)  # MON-0096 .. MON-0099
    return p


@pytest.fixture(scope="session")
def pg():
    port = 55433 if h.port_is_free(55433) else h.free_port()
    cluster = h.PgCluster(h.pg_base_dir(), port)
    cluster.ensure_init()
    if cluster.running():
        # Left over from an aborted run of this suite (it is our directory).
        cluster.stop("immediate")
    cluster.start()
    yield cluster
    with contextlib.suppress(Exception):
        cluster.stop()


@pytest.fixture(scope="session")
def db(pg, pki):
    d = h.setup_database(pg)
    for serial in ACTIVE:
        h.device_add(d, serial, status="active", model="Example Monitor",
                     ident=EUI64 if serial == EUI64_DEVICE else None)
    h.device_add(d, TO_REVOKE, status="active")
    h.device_add(d, PENDING, status="pending")
    h.device_add(d, REVOKED, status="revoked")
    return d


def _check_sanitizers(c, since=0):
    rep = c.sanitizer_report(since)
    if rep:
        pytest.fail("sanitizer report in cmsd's log (%s):\n%s" % (c.log_path, rep),
                    pytrace=False)


@pytest.fixture(scope="session")
def _shared_cmsd(pki, db):
    cfg = h.base_config(pki, db, h.free_port(), h.free_port())
    c = h.Cmsd("cmsd-shared", cfg)
    c.start()
    yield c
    with contextlib.suppress(AssertionError):
        c.stop()
    _check_sanitizers(c, getattr(c, "sanitizer_checked", 0))  # e.g. LeakSanitizer at exit


@pytest.fixture
def cmsd(_shared_cmsd):
    """The shared cmsd (default limits). Fails the test during which it died
    or printed a sanitizer report; restarts it for the next test."""
    c = _shared_cmsd
    if not c.alive():
        warnings.warn("shared cmsd had exited (rc=%s); restarting it" % c.proc.returncode)
        c.start()
    checked = getattr(c, "sanitizer_checked", 0)
    since = c.log_size()
    c.test_log_start = since
    yield c
    died = not c.alive()
    rc = c.proc.returncode
    c.sanitizer_checked = c.log_size()
    _check_sanitizers(c, checked)
    if died:
        pytest.fail("shared cmsd died during this test (rc=%s); log:\n%s"
                    % (rc, "\n".join(c.log_lines(since)[-60:])), pytrace=False)


@pytest.fixture
def cmsd_factory(pki, db):
    """make(name, start=True, **config overrides) -> a cmsd of this test."""
    made = []

    def make(name="cmsd-fn", start=True, **overrides):
        cfg = h.base_config(pki, db, h.free_port(), h.free_port())
        cfg.update(overrides)
        c = h.Cmsd(name, cfg)
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        with contextlib.suppress(AssertionError):
            c.stop()
        _check_sanitizers(c)


@pytest.fixture
def connect(pki):
    """connect(port, device) -> an authenticated MllpClient, closed at teardown."""
    opened = []

    def do(port, device, **kw):
        c = h.device_client(pki, port, device, **kw)
        opened.append(c)
        return c

    yield do
    for c in opened:
        c.close()
