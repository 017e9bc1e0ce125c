"""Black-box test helpers: paths, the test PKI, a private PostgreSQL cluster,
cmsd processes, an MLLP-over-TLS client and PCD-01 message builders.

Everything here talks to the real binaries through their public interfaces
(config file, TCP/TLS, SQL view/tables, log lines on stderr) with clients we
did not write: Python's ssl, python3-hl7, psycopg2, openssl(1).

Only our own ports and directories are used: <build>/test-run/ for the PKI,
the PostgreSQL cluster, configs and logs; ports are picked at run time, so
the suite can run while `make run` (2575/8443, var/) is up.
"""

import contextlib
import datetime
import glob
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import hl7
import psycopg2

ROOT = Path(__file__).resolve().parents[2]
BUILD = (ROOT / os.environ.get("CMS_BUILD", "build")).resolve()
RUN = BUILD / "test-run"
DATA = Path(__file__).resolve().parent / "data"
CMSD = BUILD / "cmsd"
CMSCTL = BUILD / "cmsctl"
MKPKI = ROOT / "certs" / "mkpki.sh"

# Generous: the machine is shared and noisy (and may run under ASan).
T_CONNECT = 30.0
T_ACK = 30.0
T_START = 60.0

SANITIZER_PATTERNS = [
    re.compile(r"ERROR: AddressSanitizer"),
    re.compile(r"ERROR: LeakSanitizer"),
    re.compile(r"runtime error:"),
    re.compile(r"ThreadSanitizer"),
]

DB_NAME = "cms_test"
DB_ROLE = "cms_bb"  # cmsd logs in as this role, a member of cms_server


def unique(prefix):
    """A short id unique within the session, for MSH-10 and patient ids."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


_PORTS_GIVEN = set()


def free_port(avoid=()):
    """A TCP port on 127.0.0.1 that nobody listens on right now, and that this
    process has not handed out before: two calls in a row may otherwise get the
    same port from the kernel (cmsd then refuses mllp_listen = https_listen)."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in avoid and port not in (2575, 8443) and port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
    raise RuntimeError("no free port")


def port_is_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def run(cmd, timeout=120, check=True, **kw):
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError("command failed (rc=%d): %s\nstdout:\n%s\nstderr:\n%s"
                           % (p.returncode, " ".join(map(str, cmd)), p.stdout, p.stderr))
    return p


# ---------------------------------------------------------------------------
# PKI
# ---------------------------------------------------------------------------

class Pki:
    """The test PKI made by `certs/mkpki.sh test DIR` (layout: DIR/README.txt
    and the header of mkpki.sh), plus device certificates minted with
    `certs/mkpki.sh mint` for serials the tests register with other statuses."""

    def __init__(self, base):
        self.dir = Path(base)

    def path(self, rel):
        p = self.dir / rel
        if not p.exists():
            raise FileNotFoundError("%s is missing (mkpki.sh layout changed?)" % p)
        return p

    @property
    def root_ca(self):
        """What clients verify the server with."""
        return self.path("ca.pem")

    @property
    def device_ca_bundle(self):
        return self.path("device-ca-bundle.pem")

    @property
    def operator_ca_bundle(self):
        return self.path("operator-ca-bundle.pem")

    @property
    def crl(self):
        return self.path("crl.pem")

    @property
    def server_cert(self):
        return self.path("server.crt")

    @property
    def server_key(self):
        return self.path("server.key")

    def device(self, name):
        """(cert, key) by name: a serial (devices/SERIAL.*, minted ones share
        the mint key), "bad/<name>" for the hostile ones (expired, notyet,
        revoked, rogue, impersonator, unknown, server-eku) or
        "operators/<name>"."""
        if "/" in name:
            base = self.dir / name
            cert = base.with_name(base.name + ".chain.pem")
            if not cert.exists():
                cert = self.path(name + ".crt")
            return cert, self.path(name + ".key")
        cert = self.dir / "devices" / (name + ".chain.pem")
        if not cert.exists():
            cert = self.path("devices/%s.crt" % name)
        key = self.dir / "devices" / (name + ".key")
        if not key.exists():
            prefix = re.sub(r"\d{4}$", "", name)
            key = self.path("mint/%s.key" % prefix)
        return cert, key

    def mint(self, prefix, first, count):
        run(["bash", MKPKI, "mint", self.dir, prefix, first, count], timeout=300, cwd=ROOT)


def make_pki(base):
    if not MKPKI.exists():
        raise RuntimeError("%s is missing: the test PKI recipe has not landed" % MKPKI)
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    run(["bash", MKPKI, "test", base], timeout=300, cwd=ROOT)
    return Pki(base)


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

def pg_bindir():
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                   key=lambda p: int(p.split("/")[-2]))
    if not cands:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return Path(cands[-1])


def as_postgres(cmd):
    cmd = [str(c) for c in cmd]
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def pg_base_dir():
    """<build>/test-run/pg, or a directory under /var/tmp when the postgres
    account cannot reach the checkout (e.g. a clone under /root, mode 0700)."""
    RUN.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return RUN / "pg"
    ok = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(RUN)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    if ok:
        return RUN / "pg"
    import hashlib
    base = Path("/var/tmp") / ("cms-blackbox-pg-" + hashlib.sha1(str(RUN).encode()).hexdigest()[:10])
    base.mkdir(mode=0o755, exist_ok=True)
    return base


class PgCluster:
    """A private cluster under <dir>/data, TCP on 127.0.0.1:<port>, socket
    in <dir>/sock, trust authentication (test only)."""

    def __init__(self, base, port):
        self.dir = Path(base)
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.logfile = self.dir / "postgres.log"
        self.port = port
        self.bin = pg_bindir()

    def _chown(self, p):
        if os.geteuid() == 0:
            shutil.chown(p, "postgres", "postgres")

    def ensure_init(self):
        if (self.data / "PG_VERSION").exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.dir)
        run(as_postgres([self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]), timeout=300)

    def running(self):
        p = subprocess.run(as_postgres([self.bin / "pg_ctl", "-D", self.data, "status"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return p.returncode == 0

    def start(self):
        self.sock.mkdir(exist_ok=True)
        self._chown(self.sock)
        if not self.logfile.exists():
            self.logfile.touch()
        self._chown(self.logfile)
        opts = ("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                "-c fsync=off -c full_page_writes=off -c max_connections=100 "
                "-c log_min_messages=warning" % self.port)
        run(as_postgres([self.bin / "pg_ctl", "-D", self.data, "-l", self.logfile, "-w",
                         "-t", "120", "-o", opts, "start"]), timeout=180)

    def stop(self, mode="fast"):
        run(as_postgres([self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "120",
                         "stop"]), timeout=180)

    def dsn(self, dbname="postgres", user="postgres"):
        return "host=127.0.0.1 port=%d dbname=%s user=%s connect_timeout=10" % (
            self.port, dbname, user)

    def connect(self, dbname="postgres", user="postgres"):
        c = psycopg2.connect(self.dsn(dbname, user))
        c.autocommit = True
        return c


class Db:
    """The session's database: admin queries as postgres."""

    def __init__(self, pg, name):
        self.pg = pg
        self.name = name

    @property
    def dsn(self):
        return self.pg.dsn(self.name)

    @property
    def cmsd_dsn(self):
        return self.pg.dsn(self.name, DB_ROLE)

    def query(self, sql, args=None):
        with contextlib.closing(self.pg.connect(self.name)) as c, c.cursor() as cur:
            cur.execute(sql, args)
            if cur.description is None:
                return []
            return cur.fetchall()

    def scalar(self, sql, args=None):
        rows = self.query(sql, args)
        return rows[0][0] if rows else None

    def execute(self, sql, args=None):
        with contextlib.closing(self.pg.connect(self.name)) as c, c.cursor() as cur:
            cur.execute(sql, args)

    # -- views of what was stored ------------------------------------------
    def vitals(self, patient_id=None, device=None):
        """Rows of the public view cms.vitals as dicts."""
        where, args = [], []
        if patient_id is not None:
            where.append("patient_id = %s")
            args.append(patient_id)
        if device is not None:
            where.append("device_serial = %s")
            args.append(device)
        sql = ("SELECT device_serial, patient_id, observed_at, received_at, mdc_code, "
               "mdc_label, value, unit_code, unit_label FROM cms.vitals")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY observed_at, mdc_code"
        cols = ["device_serial", "patient_id", "observed_at", "received_at", "mdc_code",
                "mdc_label", "value", "unit_code", "unit_label"]
        return [dict(zip(cols, r)) for r in self.query(sql, args)]

    def message_count(self, device, control_id):
        return self.scalar(
            "SELECT count(*) FROM cms.messages m JOIN cms.devices d ON d.id = m.device_id "
            "WHERE d.serial = %s AND m.control_id = %s", (device, control_id))

    def obs_count(self, device, control_id):
        return self.scalar(
            "SELECT count(*) FROM cms.observations o JOIN cms.messages m ON m.id = o.message_id "
            "JOIN cms.devices d ON d.id = m.device_id "
            "WHERE d.serial = %s AND m.control_id = %s", (device, control_id))

    def messages_for(self, device, control_ids):
        """{control_id: (messages rows, observation rows)} for the ids given."""
        rows = self.query(
            "SELECT m.control_id, count(DISTINCT m.id), count(o.message_id) "
            "FROM cms.messages m JOIN cms.devices d ON d.id = m.device_id "
            "LEFT JOIN cms.observations o ON o.message_id = m.id "
            "WHERE d.serial = %s AND m.control_id = ANY(%s) GROUP BY m.control_id",
            (device, list(control_ids)))
        return {r[0]: (r[1], r[2]) for r in rows}

    def audit_events(self, since_id=0):
        rows = self.query("SELECT id, event, actor, device, peer, detail::text "
                          "FROM cms.audit_events WHERE id > %s ORDER BY id", (since_id,))
        cols = ["id", "event", "actor", "device", "peer", "detail"]
        return [dict(zip(cols, r)) for r in rows]

    def max_audit_id(self):
        return self.scalar("SELECT coalesce(max(id), 0) FROM cms.audit_events")


def setup_database(pg, name=DB_NAME):
    """Fresh database for this session: drop/create, migrate with cmsctl, a
    login role for cmsd (member of cms_server, as in production)."""
    with contextlib.closing(pg.connect()) as c, c.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
        cur.execute("CREATE DATABASE %s" % name)
    db = Db(pg, name)
    if not CMSCTL.exists():
        raise RuntimeError("%s is missing (make)" % CMSCTL)
    run([CMSCTL, "db", "migrate", "--dsn", db.dsn], timeout=300, cwd=ROOT)
    with contextlib.closing(pg.connect(name)) as c, c.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,))
        if not cur.fetchone():
            cur.execute("CREATE ROLE %s LOGIN" % DB_ROLE)
        cur.execute("GRANT cms_server TO %s" % DB_ROLE)
    return db


def device_add(db, serial, status=None, ident=None, model=None):
    cmd = [CMSCTL, "db", "device-add", serial, "--dsn", db.dsn]
    if model:
        cmd += ["--model", model]
    if ident:
        cmd += ["--ident", ident]
    if status:
        cmd += ["--status", status]
    run(cmd, timeout=120, cwd=ROOT)


# ---------------------------------------------------------------------------
# cmsd
# ---------------------------------------------------------------------------

def base_config(pki, db, mllp_port, https_port):
    """Every key cmsd needs for the tests (every key: `cmsd --config-keys`)."""
    return {
        "mllp_listen": "127.0.0.1:%d" % mllp_port,
        "https_listen": "127.0.0.1:%d" % https_port,
        "workers": 1,
        "tls_cert": str(pki.server_cert),
        "tls_key": str(pki.server_key),
        "tls_device_ca": str(pki.device_ca_bundle),
        "tls_operator_ca": str(pki.operator_ca_bundle),
        "tls_crl": str(pki.crl),
        "tls_session_timeout_s": 300,
        "db_conninfo": db.cmsd_dsn + " application_name=cmsd-test",
        "db_timezone": "UTC",
        "db_connect_timeout_s": 60,
        "max_connections": 200,
        "max_frame_bytes": 65536,
        "preauth_buffer_bytes": 16384,
        "handshake_timeout_ms": 10000,
        "idle_timeout_ms": 120000,
        "write_timeout_ms": 30000,
        "max_pending_per_conn": 64,
        "max_output_bytes": 1048576,
        "batch_max_msgs": 256,
        "batch_max_delay_ms": 5,
        "max_queued_msgs": 20000,
        "db_query_timeout_ms": 10000,
        "ingest_timeout_ms": 30000,
        "db_reconnect_min_ms": 100,
        "db_reconnect_max_ms": 1000,
        "retention_days": 0,
        "partitions_ahead_days": 7,
        # Every EST test comes from 127.0.0.1: a limit no test reaches but the one
        # about it (test_est_rate_limit.py sets its own).
        "est_anon_per_min": 6000,
        "hl7_app": "CMS-TEST",
        "hl7_facility": "BB-HOSPITAL",
        "log_level": "debug",
    }


def write_config(path, cfg):
    lines = ["# generated by tests/blackbox"]
    for k, v in cfg.items():
        if isinstance(v, str):
            v = '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"')
        lines.append("%s = %s" % (k, v))
    Path(path).write_text("\n".join(lines) + "\n")


def cmsd_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


class Cmsd:
    """One cmsd process with its config file and a log file (stderr+stdout)."""

    _seq = 0

    def __init__(self, name, cfg):
        Cmsd._seq += 1
        self.name = name
        self.cfg = dict(cfg)
        (RUN / "logs").mkdir(parents=True, exist_ok=True)
        self.cfg_path = RUN / ("%s.conf" % name)
        self.log_path = RUN / "logs" / ("%s-%d-%d.log" % (name, os.getpid(), Cmsd._seq))
        self.proc = None
        self.starts = 0

    @property
    def port(self):
        return int(self.cfg["mllp_listen"].rsplit(":", 1)[1])

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait=True):
        assert CMSD.exists(), "%s is missing (make)" % CMSD
        write_config(self.cfg_path, self.cfg)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(("\n### test harness: start #%d of %s --config %s\n"
                       % (self.starts, CMSD, self.cfg_path)).encode())
            log.flush()
            self.proc = subprocess.Popen([str(CMSD), "--config", str(self.cfg_path)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                         env=cmsd_env(), stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=T_START):
        """Listening on the MLLP port. (A message sent before the database is
        up waits in cmsd's queue, so the port is enough.)"""
        def ready():
            if not self.alive():
                raise AssertionError("cmsd exited (rc=%s) during start-up; log:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(ready, timeout, 0.1, "cmsd to listen on %d" % self.port)

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL if it does not exit. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("cmsd did not exit within %ds of SIGTERM" % timeout)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    # -- log ----------------------------------------------------------------
    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_lines(self, since=0):
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace").splitlines()

    def log_tail(self, n=60):
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_log(self, pred, since=0, timeout=20, what="a log line"):
        """Waits for a log line (after byte offset since) for which pred(line)
        is true; returns it. pred may be a regex string."""
        if isinstance(pred, str):
            rx = re.compile(pred)
            pred = rx.search
        found = []

        def look():
            for ln in self.log_lines(since):
                if pred(ln):
                    found.append(ln)
                    return True
            return False
        try:
            wait_until(look, timeout, 0.1, what)
        except AssertionError:
            raise AssertionError("no %s in cmsd's log within %ds; log since the test began:\n%s"
                                 % (what, timeout, "\n".join(self.log_lines(since)[-80:])))
        return found[0]

    def peer_lines(self, local_port, since=0):
        """Log lines naming a client connection (peer=127.0.0.1:<port>)."""
        rx = re.compile(r"peer=\"?(?:\[?::ffff:)?127\.0\.0\.1\]?:%d\b" % local_port)
        return [ln for ln in self.log_lines(since) if rx.search(ln)]

    def sanitizer_report(self, since=0):
        lines = self.log_lines(since) if self.log_path.exists() else []
        for i, ln in enumerate(lines):
            if any(p.search(ln) for p in SANITIZER_PATTERNS):
                return "\n".join(lines[max(0, i - 5):i + 40])
        return None


def logfmt(line):
    """Parses a logfmt line into a dict (quoted values unescaped)."""
    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        out[m.group(1)] = v
    return out


# ---------------------------------------------------------------------------
# TLS + MLLP client
# ---------------------------------------------------------------------------

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def frame(payload):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return SB + payload + EB + CR


def client_context(pki, cert=None, key=None, min_version=None, max_version=None,
                   seclevel0=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.root_ca))
    ctx.check_hostname = True
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    if seclevel0:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Closed(Exception):
    """The server closed the connection (EOF, reset or a TLS alert)."""


class Ack:
    def __init__(self, raw):
        self.raw = raw
        self.msg = hl7.parse(raw.replace("\n", "\r").strip("\r"))
        msa = self.msg.segment("MSA")
        self.code = str(msa(1)) if len(msa) > 1 else ""
        self.control_id = str(msa(2)) if len(msa) > 2 else ""
        self.text = str(msa(3)) if len(msa) > 3 else ""
        self.err_code = ""
        self.err_text = ""
        try:
            err = self.msg.segment("ERR")
        except KeyError:
            err = None
        if err is not None:
            self.err_code = self.msg.extract_field("ERR", 1, 3, 1, 1) if len(err) > 3 else ""
            self.err_text = self.msg.extract_field("ERR", 1, 8, 1, 1) if len(err) > 8 else ""

    def get(self, seg, field, comp=1):
        """Unescaped text of SEG-field.comp (MSH numbering as in the standard)."""
        try:
            return self.msg.extract_field(seg, 1, field, 1, comp)
        except (KeyError, IndexError):
            return ""

    def reason(self):
        """The human-readable reason (MSA-3 and/or ERR-8)."""
        return " ".join(x for x in (self.text, self.err_text) if x)

    def __repr__(self):
        return "Ack(%r)" % self.raw.replace("\r", "\\r")


class MllpClient:
    """MLLP over TLS, as a monitor does it."""

    def __init__(self, port, ctx, host="127.0.0.1", sni="localhost", timeout=T_CONNECT,
                 handshake=True, session=None, proxy_header=None, source=None):
        """proxy_header: bytes sent before TLS (a PROXY protocol header, as a load
        balancer would); source: the local address to connect from."""
        self.port = port
        self.raw = socket.create_connection((host, port), timeout=timeout,
                                            source_address=(source, 0) if source else None)
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port = self.raw.getsockname()[1]
        if proxy_header:
            self.raw.sendall(proxy_header)
        self.sock = ctx.wrap_socket(self.raw, server_hostname=sni,
                                    do_handshake_on_connect=False, session=session)
        self.buf = b""
        self.closed = False
        if handshake:
            self.sock.do_handshake()

    def close(self):
        with contextlib.suppress(Exception):
            self.sock.close()
        with contextlib.suppress(Exception):
            self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send_bytes(self, data, timeout=T_ACK):
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except (ssl.SSLError, OSError) as e:
            if isinstance(e, socket.timeout):
                raise
            self.closed = True
            raise Closed("send: %r" % e)

    def send(self, payload, timeout=T_ACK):
        self.send_bytes(frame(payload), timeout)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise
        except (ssl.SSLError, OSError) as e:
            self.closed = True
            raise Closed("recv: %r" % e)
        if not data:
            self.closed = True
            raise Closed("EOF")
        self.buf += data

    def recv_frame(self, timeout=T_ACK):
        """The next MLLP payload (str). Raises Closed or socket.timeout."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.buf.find(SB)
            if s >= 0:
                e = self.buf.find(EB + CR, s)
                if e >= 0:
                    payload = self.buf[s + 1:e]
                    self.buf = self.buf[e + 2:]
                    return payload.decode("utf-8", errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no complete frame within %.1fs" % timeout)
            self._fill(left)

    def recv_ack(self, timeout=T_ACK):
        return Ack(self.recv_frame(timeout))

    def request(self, payload, timeout=T_ACK):
        self.send(payload, timeout)
        return self.recv_ack(timeout)

    def wait_closed(self, timeout):
        """True when the server closes the connection within timeout (any data
        received before is returned in self.buf)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._fill(min(left, 1.0))
            except socket.timeout:
                continue
            except Closed:
                return True


def device_client(pki, port, device, **kw):
    cert, key = pki.device(device) if not isinstance(device, tuple) else device
    return MllpClient(port, client_context(pki, cert, key), **kw)


def expect_refused(pki, port, cert_key, message, timeout=20, ctx=None):
    """Connects with the given (cert, key) (or None: no client certificate),
    sends message and returns (local_port, outcome) where outcome says how
    the server refused. Fails if an ACK comes back or the connection stays
    open."""
    if ctx is None:
        cert, key = cert_key if cert_key else (None, None)
        ctx = client_context(pki, cert, key)
    try:
        c = MllpClient(port, ctx, handshake=False)
    except OSError as e:
        return None, "connect: %r" % e
    local = c.local_port
    with c:
        try:
            c.sock.do_handshake()
        except ssl.SSLCertVerificationError as e:
            # our side refused the server: that is not the server refusing us
            raise AssertionError("client could not verify cmsd's certificate: %r" % e)
        except (ssl.SSLError, OSError) as e:
            return local, "handshake: %r" % e
        try:
            c.send(message, timeout=timeout)
        except Closed as e:
            return local, str(e)
        try:
            f = c.recv_frame(timeout)
        except Closed as e:
            return local, str(e)
        except socket.timeout:
            raise AssertionError("connection from refused peer still open after %ds "
                                 "(no ACK, no close)" % timeout)
        raise AssertionError("refused peer got an answer: %r" % f)


def good_client_still_served(cmsd, pki):
    cid, pt = unique("AFTER"), unique("PT-AFTER")
    with device_client(pki, cmsd.port, "MON-0001") as c:
        ack = c.request(pcd01("MON-0001", cid, patient=pt))
    assert ack.code == "AA" and ack.control_id == cid, ack


def assert_refusal_logged(cmsd, local_port, reason_rx, since):
    """A warn/error line for this connection (peer=127.0.0.1:<port>) that
    names the reason."""
    rx = re.compile(reason_rx)

    def pred(line):
        return (local_port is not None and line in cmsd.peer_lines(local_port, since)
                and re.search(r"level=(warn|error)", line) and rx.search(line))
    cmsd.wait_log(pred, since, timeout=20,
                  what="warn/error line for peer port %s matching %s" % (local_port, reason_rx))



# ---------------------------------------------------------------------------
# PCD-01 messages
# ---------------------------------------------------------------------------

SAMPLE = (DATA / "pcd01-vitals.hl7").read_text().replace("\r\n", "\r").replace("\n", "\r") \
    .strip("\r") + "\r"

# The sample's 8 numeric observations: code -> (label, value, unit code, unit
# label, observed_at).
_T0830 = datetime.datetime(2026, 11, 15, 8, 30, 0,
                           tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
_T0828 = datetime.datetime(2026, 11, 15, 8, 28, 45,
                           tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
SAMPLE_OBS = {
    "147842": ("MDC_ECG_HEART_RATE", 72, "264864", "MDC_DIM_BEAT_PER_MIN", _T0830),
    "150456": ("MDC_PULS_OXIM_SAT_O2", 96, "262688", "MDC_DIM_PERCENT", _T0830),
    "149530": ("MDC_PULS_OXIM_PULS_RATE", 71, "264864", "MDC_DIM_BEAT_PER_MIN", _T0830),
    "150021": ("MDC_PRESS_BLD_NONINV_SYS", 132, "266016", "MDC_DIM_MMHG", _T0828),
    "150022": ("MDC_PRESS_BLD_NONINV_DIA", 84, "266016", "MDC_DIM_MMHG", _T0828),
    "150023": ("MDC_PRESS_BLD_NONINV_MEAN", 100, "266016", "MDC_DIM_MMHG", _T0828),
    "150344": ("MDC_TEMP", 37.2, "268192", "MDC_DIM_DEGC", _T0830),
    "151562": ("MDC_RESP_RATE", 16, "264928", "MDC_DIM_RESP_PER_MIN", _T0830),
}
SAMPLE_NOBS = len(SAMPLE_OBS)


def parse(text):
    return hl7.parse(text.strip("\r"))


def to_wire(m):
    """python-hl7 Message -> ER7 text with CR after every segment."""
    return str(m).strip("\r") + "\r"


def pcd01(device, control_id, patient="MRN-448812", msh3=None, extra_obx=(),
          set_fields=None):
    """The sample PCD-01 as device would send it: MSH-3 = device^device^L (or
    msh3), MSH-10 = control_id, OBR-2/3 numbered in the device's namespace,
    PID-3.1 = patient. extra_obx: raw OBX segments appended. set_fields:
    {"MSH.F12": "3.0", ...} python-hl7 accessor assignments."""
    m = parse(SAMPLE)
    m["MSH.F3"] = msh3 if msh3 is not None else "%s^%s^L" % (device, device)
    m["MSH.F10"] = control_id
    m["PID.F3.R1.C1"] = patient
    m["OBR.F2"] = "%s^%s" % (control_id, device)
    m["OBR.F3"] = "%s^%s" % (control_id, device)
    for k, v in (set_fields or {}).items():
        m[k] = v
    text = to_wire(m)
    for seg in extra_obx:
        text += seg.strip("\r") + "\r"
    return text


class Pipeline:
    """Streams messages over one connection with up to `window` un-ACKed
    messages in flight. acks: control_id -> list of MSA-1 codes received."""

    def __init__(self, client, window=16, on_ack=None):
        self.c = client
        self.on_ack = on_ack  # on_ack(control_id, code, monotonic time)
        self.window = window
        self.inflight = []  # control ids sent, not yet answered (in order)
        self.acks = {}
        self.last = {}  # control id -> the last Ack
        self.ack_times = {}
        self.sent_times = {}
        self.closed = None

    def aa(self):
        return {cid for cid, codes in self.acks.items() if "AA" in codes}

    def _recv_some(self, timeout):
        try:
            a = self.c.recv_ack(timeout)
        except socket.timeout:
            return False
        now = time.monotonic()
        self.last[a.control_id] = a
        self.acks.setdefault(a.control_id, []).append(a.code)
        self.ack_times.setdefault(a.control_id, []).append(now)
        if self.on_ack:
            self.on_ack(a.control_id, a.code, now, a)
        if a.control_id in self.inflight:
            self.inflight.remove(a.control_id)
        return True

    def send_burst(self, msgs):
        """Sends msgs [(control_id, text)] in one write (coalesced frames),
        without waiting for ACKs."""
        data = b"".join(frame(text) for _, text in msgs)
        now = time.monotonic()
        for cid, _ in msgs:
            self.sent_times.setdefault(cid, now)
            self.inflight.append(cid)
        self.c.send_bytes(data)

    def run(self, msgs, stop=None, deadline=60.0, drain=True, pace=0.0):
        """Sends msgs [(control_id, text)] keeping the window full; calls
        stop(self) after every ACK and returns when it is true, when all are
        sent (and answered, if drain), when the connection closes (self.closed
        = reason) or when the deadline passes. Returns the ids sent."""
        end = time.monotonic() + deadline
        sent = []
        it = iter(msgs)
        pending = None
        try:
            while time.monotonic() < end:
                if stop and stop(self):
                    return sent
                if pending is None:
                    pending = next(it, None)
                if pending is not None and len(self.inflight) < self.window:
                    cid, text = pending
                    self.c.send(text)
                    self.sent_times.setdefault(cid, time.monotonic())
                    self.inflight.append(cid)
                    sent.append(cid)
                    pending = None
                    if pace:
                        time.sleep(pace)
                    # take whatever already arrived without waiting
                    while self._recv_some(0.001):
                        if stop and stop(self):
                            return sent
                    continue
                if pending is None and (not drain or not self.inflight):
                    return sent
                self._recv_some(min(0.5, max(0.01, end - time.monotonic())))
        except Closed as e:
            self.closed = str(e)
        return sent
