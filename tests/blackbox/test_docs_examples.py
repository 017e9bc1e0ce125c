"""The examples in README.md and docs/*.md run as written.

Every ```sh block of each document is run, in order, in one shell session,
against a fresh instance made the way `make run` makes one (tools/run.sh:
dev PKI, private PostgreSQL on a Unix socket, migrations, demo devices
MON-0001..3 with their certificates, var/cmsd.conf, var/cmsctl*.conf; then
cmsd), in a directory of its own under <build>/test-run/docs/<document>/
with ports of its own; the block's exit status and the output shown after it
(a ```text block) must match. The rules for writing documents (markers,
``...`` for variable parts) are in doc_examples.py and
tests/blackbox/README.md. A document that breaks them fails here too.

When a block fails, the message names the document and line, shows the
block as run, its exit status and output, and the tail of cmsd's log; the
instance's files stay in <build>/test-run/docs/<document>/ (block-NN.sh and
block-NN.out, cmsd.log, root/var/) until the next run.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

import doc_examples as de
import helpers as h

DOCS = [h.ROOT / "README.md"] + sorted((h.ROOT / "docs").glob("*.md"))
DOCS_RUN = h.RUN / "docs"
# Top-level entries of the checkout that the instance's directory does not link to.
NOT_LINKED = {".git", "build", "var"}
PG_PORT = 5433  # tools/run.sh's default: a socket file name under var/pg, no TCP


class DocInstance:
    """A `make run`-style instance in DOCS_RUN/<name>/root (a directory laid
    out like the checkout: its entries link to the real ones, var/ is its
    own, build/ is the build under test)."""

    def __init__(self, name):
        self.base = DOCS_RUN / name
        self.root = self.base / "root"
        self.log_path = self.base / "cmsd.log"
        self.pid_path = self.base / "cmsd.pid"
        self.proc = None
        self.mllp = self.https = None

    def _pg(self, cmd, check=True):
        return pg_sh(cmd, self.root / "var" / "pg", check)

    def _clean_previous(self):
        """What an earlier run (killed before its teardown) left: its cmsd,
        by the pid it recorded, and its database."""
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError,
                                 PermissionError):
            pid = int(self.pid_path.read_text())
            cmdline = Path("/proc/%d/cmdline" % pid).read_bytes()
            if str(self.root).encode() in cmdline or b"var/cmsd.conf" in cmdline:
                os.kill(pid, signal.SIGKILL)
        if (self.root / "var" / "pg").is_dir():
            self._pg("stop", check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def prepare(self, template=None):
        """tools/run.sh in the instance's directory. template: a var/ to start
        from (a dev PKI and an initialised, stopped cluster, see var_template):
        run.sh then takes them as `make run` takes a var/ it made before."""
        self._clean_previous()
        self.root.mkdir(parents=True)
        (self.base / "home").mkdir()
        for entry in h.ROOT.iterdir():
            if entry.name not in NOT_LINKED:
                (self.root / entry.name).symlink_to(entry)
        (self.root / "build").symlink_to(h.BUILD)
        if template is not None:
            # cp -a: modes, owners (the cluster belongs to postgres when we are root), links
            h.run(["cp", "-a", template, self.root / "var"], timeout=120)
        self.mllp, self.https = h.free_port(), h.free_port()
        env = de.blank_env(self.base / "home")
        env.update(CMS_RUN_NO_BUILD="1", CMS_RUN_PREPARE_ONLY="1", BUILD="build",
                   MLLP_PORT=str(self.mllp), HTTPS_PORT=str(self.https), PG_PORT=str(PG_PORT),
                   PG_FAST="1")  # a throwaway cluster: no fsync (tools/pg.sh)
        p = subprocess.run(["tools/run.sh"], cwd=str(self.root), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
        (self.base / "run.sh.log").write_text(p.stdout)
        assert p.returncode == 0, "tools/run.sh (prepare only) failed (rc=%d):\n%s" % (
            p.returncode, p.stdout[-4000:])

    def start(self):
        env = de.blank_env(self.base / "home")
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["build/cmsd", "--config", "var/cmsd.conf"],
                                         cwd=str(self.root), env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        self.pid_path.write_text(str(self.proc.pid))

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError("cmsd exited (rc=%s) at start; log:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            try:
                for port in (self.mllp, self.https):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        h.wait_until(listening, h.T_START, 0.1, "cmsd to listen on %d and %d"
                     % (self.mllp, self.https))

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self):
        """cmsd stops cleanly on SIGTERM (exit 0) without a sanitizer report;
        the database stops. Returns what went wrong, or None."""
        problems = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                problems.append("cmsd did not exit within 30 s of SIGTERM")
        if self.proc is not None and self.proc.returncode not in (0, None) and not problems:
            problems.append("cmsd exited with status %s" % self.proc.returncode)
        lines = self.log_text().splitlines()
        for i, ln in enumerate(lines):
            if any(p.search(ln) for p in h.SANITIZER_PATTERNS):
                problems.append("sanitizer report in cmsd's log:\n"
                                + "\n".join(lines[max(0, i - 5):i + 40]))
                break
        with contextlib.suppress(Exception):
            self._pg("stop", check=False)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        return "\n".join(problems) or None


def pg_sh(cmd, pgdir, check=True):
    return h.run([h.ROOT / "tools" / "pg.sh", cmd, pgdir, PG_PORT], timeout=180, check=check)


@pytest.fixture(scope="module")
def var_template():
    """What every instance's tools/run.sh would otherwise make first, made once:
    the dev PKI (certs/mkpki.sh dev) and a PostgreSQL cluster after its first
    start (tools/pg.sh: initdb, database cms, role cmsd), stopped. On a busy
    2-core machine these take ~20 s per instance. The cluster is left out when
    tools/pg.sh had to put it outside var/pg (DIR/cluster -> /var/tmp/...):
    then every instance makes its own."""
    base = DOCS_RUN / "template"
    var = base / "var"
    if (var / "pg").is_dir():
        pg_sh("stop", var / "pg", check=False)
    shutil.rmtree(base, ignore_errors=True)
    var.mkdir(parents=True)
    h.run(["bash", h.ROOT / "certs" / "mkpki.sh", "dev", var / "pki"], timeout=300)
    env_fast = dict(os.environ, PG_FAST="1")
    p = subprocess.run([str(h.ROOT / "tools" / "pg.sh"), "start", str(var / "pg"), str(PG_PORT)],
                       env=env_fast, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=300)
    assert p.returncode == 0, "tools/pg.sh start (template) failed:\n" + p.stdout
    pg_sh("stop", var / "pg")
    if (var / "pg" / "cluster").is_symlink():
        shutil.rmtree(var / "pg")
    return var


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(h.ROOT)) for d in DOCS])
def test_doc_examples(doc, var_template):
    rel = str(doc.relative_to(h.ROOT))
    try:
        blocks, bad = de.parse(doc.read_text(), rel), None
    except de.DocError as e:
        blocks, bad = [], str(e)
    if bad:
        pytest.fail(bad, pytrace=False)
    todo = [b for b in blocks if b.runs]
    if not todo:
        return  # nothing to run; the document follows the rules (parse above)
    inst = DocInstance(doc.stem)
    inst.prepare(var_template)
    failure = None
    try:
        inst.start()
        session = de.Session(inst.root, de.blank_env(inst.base / "home"), inst.base)
        for b in todo:
            text = de.rewrite_ports(b.text, inst.mllp, inst.https)
            rc, out, _ = session.run(text, b.timeout)
            if rc != b.exit:
                failure = de.describe_failure(
                    b, text, rc, out, "exit status %s, expected %d"
                    % ("(timeout)" if rc is None else rc, b.exit))
            elif b.expected is not None and not de.output_matches(
                    de.rewrite_ports(b.expected, inst.mllp, inst.https), out):
                failure = de.describe_failure(b, text, rc, out,
                                              "the output differs from the one shown")
            if failure:
                break
    finally:
        problem = inst.stop()
    if failure:
        pytest.fail("%s\n--- cmsd log (last 40 lines, %s) ---\n%s"
                    % (failure, inst.log_path, inst.log_tail()), pytrace=False)
    if problem:
        pytest.fail("%s: %s" % (rel, problem), pytrace=False)


# ---------------------------------------------------------------------------
# The runner's own rules: a drifted example must fail, a bad document must be
# refused (so that the tests above cannot pass by not looking).
# ---------------------------------------------------------------------------

def test_expected_output_rules():
    m = de.output_matches
    assert m("device MON-0100 revoked (reason keyCompromise)\n",
             "device MON-0100 revoked (reason keyCompromise)\n")
    assert not m("device MON-0100 revoked (reason keyCompromise)\n",
                 "device MON-0100 revoked (reason unspecified)\n")
    # ... inside a line: any text; runs of spaces are one space; blank ends ignored
    assert m("id=... sha256=...\n", "\nid=42   sha256=9f86d0\n\n")
    assert not m("id=... sha256=...\n", "id=42\n")
    # a line of ... : any number of lines, none included
    assert m("first\n...\nlast\n", "first\na\nb\nlast\n")
    assert m("first\n...\nlast\n", "first\nlast\n")
    assert not m("first\n...\nlast\n", "first\na\nlast\nmore\n")
    # every actual line must be accounted for
    assert not m("one\n", "one\ntwo\n")
    assert not m("one\ntwo\n", "one\n")


def test_document_rules():
    ok = ("<!-- doc-test: exit=3; timeout=5 -->\n```sh\nfalse\n```\n\n```text\nout\n```\n"
          "<!-- doc-test: skip (needs a person; or two) -->\n```sh\nmake run\n```\n"
          "<!-- doc-test: skip minutes of load -->\n```bash\nmake bench\n```\n")
    blocks = de.parse(ok, "ok.md")
    assert [(b.lang, b.exit, b.timeout, b.skip, b.expected) for b in blocks] == [
        ("sh", 3, 5, None, "out\n"), ("text", 0, 120, None, None),
        ("sh", 0, 120, "needs a person; or two", None),
        ("bash", 0, 120, "minutes of load", None)]
    bad = {
        "```\nbuild/cmsctl whoami\n```\n": "without a language",
        "<!-- doc-test: skip -->\n```sh\nmake run\n```\n": "needs a reason",
        "<!-- doc-test: sometimes -->\n```sh\ntrue\n```\n": "unknown doc-test marker",
        "<!-- doc-test: exit=1 x -->\n```sh\ntrue\n```\n": "unknown doc-test marker",
        "<!-- doc-test: exit=1 -->\n\ntext\n": "not followed by a code block",
        "Run:\n\n    build/cmsctl whoami\n": "indented as a code block",
        "```sh\nbuild/cms-monitor --ca x \\\n  --cert y --key z\n```\n": "without --port",
        "```sh\ntrue\n": "not closed",
    }
    for text, why in bad.items():
        with pytest.raises(de.DocError, match=why):
            de.parse(text, "bad.md")
    # a cms-monitor with --port on a continuation line is fine, and so are the rewritten ports
    b = de.parse("```sh\nbuild/cms-monitor --ca x \\\n  --port 2575 --count 1\n```\n", "p.md")[0]
    assert de.rewrite_ports(b.text, 40001, 40002) == \
        "build/cms-monitor --ca x \\\n  --port 40001 --count 1\n"
    assert de.rewrite_ports("https://127.0.0.1:8443/x 18443 25750", 1, 2) == \
        "https://127.0.0.1:2/x 18443 25750"


def test_session_carries_state_and_stops_at_a_failure(tmp_path):
    env = de.blank_env(tmp_path)
    s = de.Session(tmp_path, env, tmp_path)
    rc, out, _ = s.run("A=one\nexport B=two\nf() { echo \"f:$1\"; }\nmkdir -p sub && cd sub\n", 30)
    assert rc == 0, out
    rc, out, _ = s.run('echo "$A $B $(basename "$PWD")"; f x\nexport PATH=/nowhere:$PATH\n', 30)
    assert (rc, out) == (0, "one two sub\nf:x\n")
    rc, out, _ = s.run('echo "${PATH%%:*}"\n', 30)
    assert (rc, out) == (0, "/nowhere\n")
    # set -e: the first failing command ends the block with its status
    rc, out, _ = s.run("echo before\n(exit 3)\necho after\n", 30)
    assert (rc, out) == (3, "before\n")
    # set -u: a variable never set (a placeholder left in a document) fails
    rc, out, _ = s.run("echo $TOKEN_NEVER_SET\n", 30)
    assert rc != 0 and "unbound variable" in out
    # pipefail
    rc, _, _ = s.run("false | cat\n", 30)
    assert rc == 1
    rc, _, _ = s.run("sleep 30\n", 1)
    assert rc is None
