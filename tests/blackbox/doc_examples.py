"""Executable documentation: the shell blocks of README.md and docs/*.md,
run as a reader would run them (test_docs_examples.py does, against a
`make run`-style instance of their own).

This module knows Markdown and shells, not cmsd: parse() finds the fenced
blocks with their doc-test markers and expected outputs, output_matches()
compares an output with the one shown (``...`` for variable parts),
rewrite_ports() swaps the dev ports for the instance's, and Session runs a
document's blocks one after another in one shell session. The rules a
document follows are written for its authors in tests/blackbox/README.md
("Documentation examples"); DocError names a document that breaks them.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

RUN_LANGS = {"sh", "bash", "shell"}
DEV_MLLP_PORT = 2575
DEV_HTTPS_PORT = 8443
DEFAULT_TIMEOUT = 120

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")
_MARKER = re.compile(r"^\s*<!--\s*doc-test:(.*?)-->\s*$")
_MARKER_OPEN = re.compile(r"^\s*<!--\s*doc-test:")
# A command a reader would type, indented as a Markdown code block instead of fenced.
_INDENTED_CMD = re.compile(
    r"^(?: {4,}|\t)(?:\$ )?(?:build/|tools/|certs/|cmsctl |curl |openssl |make |psql |export "
    r"|cms-monitor |cmsd )")


class DocError(Exception):
    """The document itself breaks the rules above (not the behaviour it shows)."""


class Block:
    """One fenced block: its language, text, 1-based line of the opening
    fence, and (for a block to run) its markers and expected output."""

    def __init__(self, doc, line, lang, text):
        self.doc = doc
        self.line = line
        self.lang = lang
        self.text = text
        self.skip = None        # reason, when skipped
        self.exit = 0
        self.timeout = DEFAULT_TIMEOUT
        self.expected = None    # text of the following ```text block, or None
        self.expected_line = None

    @property
    def runs(self):
        return self.lang in RUN_LANGS and self.skip is None

    def where(self):
        return "%s:%d" % (self.doc, self.line)


_MARKER_ITEM = re.compile(
    r"\s*(?:skip\s*\((?P<why>[^)]*)\)|skip\b(?P<why2>[^;]*)|exit\s*=\s*(?P<exit>\d+)"
    r"|timeout\s*=\s*(?P<timeout>\d+))\s*(?:;|$)")


def _apply_markers(block, markers, where):
    for m in markers:
        text, pos = m.strip(), 0
        while pos < len(text):
            it = _MARKER_ITEM.match(text, pos)
            if not it or it.end() == pos:
                raise DocError("%s: unknown doc-test marker %r (skip (why), exit=N, "
                               "timeout=S)" % (where, text[pos:]))
            if it.group("exit"):
                block.exit = int(it.group("exit"))
            elif it.group("timeout"):
                block.timeout = int(it.group("timeout"))
            else:
                why = (it.group("why") if it.group("why") is not None
                       else it.group("why2")).strip()
                if not why:
                    raise DocError("%s: 'doc-test: skip' needs a reason, e.g. "
                                   "'skip (needs a person)'" % where)
                block.skip = why
            pos = it.end()


def parse(text, doc="doc"):
    """The fenced blocks of a Markdown document, in order, with markers and
    expected outputs attached. Raises DocError for a document that breaks
    the rules of this module."""
    lines = text.split("\n")
    blocks = []
    pending = []            # markers waiting for the next block
    pending_line = None
    i = 0
    while i < len(lines):
        ln = lines[i]
        m = _FENCE.match(ln)
        if m:
            fence, lang = m.group(2), m.group(3).lower()
            start = i + 1
            j = i + 1
            close = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{%d,}\\s*$" % len(fence))
            while j < len(lines) and not close.match(lines[j]):
                j += 1
            if j >= len(lines):
                raise DocError("%s:%d: code block not closed" % (doc, start))
            indent = len(m.group(1))
            body = [x[indent:] if x[:indent].strip() == "" else x for x in lines[i + 1:j]]
            if not lang:
                raise DocError("%s:%d: code block without a language: write ```sh for a "
                               "command to run (or mark it 'doc-test: skip (why)'), "
                               "```text for output, or ```json, ```ini ..." % (doc, start))
            b = Block(doc, start, lang, "\n".join(body) + "\n")
            _apply_markers(b, pending, "%s:%d" % (doc, pending_line or start))
            pending, pending_line = [], None
            # a ```text block right after a block to run is its expected output
            prev = blocks[-1] if blocks else None
            if lang == "text" and prev is not None and prev.lang in RUN_LANGS \
                    and getattr(prev, "_open_for_output", False):
                prev.expected = b.text
                prev.expected_line = start
            b._open_for_output = lang in RUN_LANGS
            if prev is not None:
                prev._open_for_output = False
            blocks.append(b)
            i = j + 1
            continue
        if _MARKER_OPEN.match(ln):
            whole, k = ln, i
            while "-->" not in whole and k + 1 < len(lines):
                k += 1
                whole += " " + lines[k].strip()
            mm = _MARKER.match(whole)
            if not mm:
                raise DocError("%s:%d: malformed doc-test marker" % (doc, i + 1))
            pending.append(mm.group(1))
            pending_line = pending_line or i + 1
            i = k + 1
            continue
        if ln.strip():
            if _INDENTED_CMD.match(ln):
                raise DocError("%s:%d: a command indented as a code block: fence it as "
                               "```sh (it is then run; or mark it 'doc-test: skip (why)')"
                               % (doc, i + 1))
            if pending:
                raise DocError("%s:%d: doc-test marker not followed by a code block"
                               % (doc, pending_line))
            if blocks:
                blocks[-1]._open_for_output = False
        i += 1
    if pending:
        raise DocError("%s:%d: doc-test marker not followed by a code block" % (doc, pending_line))
    for b in blocks:
        if b.lang in RUN_LANGS and b.skip is None:
            _check_ports(b)
    return blocks


def _check_ports(b):
    # join continuation lines, then look at each cms-monitor command
    joined = re.sub(r"\\\n", " ", b.text)
    for ln in joined.split("\n"):
        code = ln.split(" #", 1)[0]
        if re.search(r"(^|[\s/;|&(])cms-monitor(\s|$)", code) and "--port" not in code \
                and "--help" not in code:
            raise DocError("%s: cms-monitor without --port would reach the default port "
                           "%d, which the runner cannot redirect: write --port %d"
                           % (b.where(), DEV_MLLP_PORT, DEV_MLLP_PORT))


# ---------------------------------------------------------------------------
# Expected output
# ---------------------------------------------------------------------------

def _norm(line):
    return re.sub(r"[ \t]+", " ", line.strip(" \t\r"))


def _trim(lines):
    while lines and not lines[0]:
        lines = lines[1:]
    while lines and not lines[-1]:
        lines = lines[:-1]
    return lines


def _line_rx(exp):
    parts = exp.split("...")
    return re.compile("^" + ".*".join(re.escape(p) for p in parts) + "$", re.S)


def output_matches(expected, actual):
    """Whether actual (text) matches expected (text) under the rules above."""
    exp = _trim([_norm(x) for x in expected.split("\n")])
    act = _trim([_norm(x) for x in actual.replace("\r\n", "\n").split("\n")])
    rxs = [None if e.strip() == "..." else _line_rx(e) for e in exp]
    memo = {}

    def m(i, j):
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(exp):
            r = j == len(act)
        elif rxs[i] is None:
            r = any(m(i + 1, k) for k in range(j, len(act) + 1))
        else:
            r = j < len(act) and rxs[i].match(act[j]) is not None and m(i + 1, j + 1)
        memo[key] = r
        return r

    return m(0, 0)


def rewrite_ports(text, mllp, https):
    """The dev ports replaced by the instance's (whole numbers only)."""
    text = re.sub(r"(?<![0-9])%d(?![0-9])" % DEV_MLLP_PORT, str(mllp), text)
    return re.sub(r"(?<![0-9])%d(?![0-9])" % DEV_HTTPS_PORT, str(https), text)


# ---------------------------------------------------------------------------
# Running a document's blocks
# ---------------------------------------------------------------------------

# Saved at the end of every block and sourced at the start of the next: the
# shell's variables (but bash's own dynamic and read-only ones), its
# functions and its directory.
_PROLOGUE = r"""
__doc_save() {
    local __doc_rc=$? __doc_v __doc_keep=()
    for __doc_v in $(compgen -v); do
        case $__doc_v in
        __doc* | BASH* | FUNCNAME | LINENO | RANDOM | SRANDOM | SECONDS | EPOCH* | PIPESTATUS | \
            PPID | SHLVL | PWD | OLDPWD | _ | HISTCMD | COMP_* | DIRSTACK | GROUPS | OPTIND | \
            OPTARG | OPTERR | SHELLOPTS | UID | EUID | HOSTNAME | HOSTTYPE | MACHTYPE | OSTYPE)
            continue ;;
        esac
        [[ ${!__doc_v@a} == *r* ]] || __doc_keep+=("$__doc_v")
    done
    {
        declare -p "${__doc_keep[@]}" 2>/dev/null
        declare -f
        printf 'cd %q\n' "$PWD"
    } >"$__DOC_STATE.new" 2>/dev/null && mv -f "$__DOC_STATE.new" "$__DOC_STATE"
    exit "$__doc_rc"
}
trap __doc_save EXIT
if [[ -f $__DOC_STATE ]]; then source "$__DOC_STATE" 2>/dev/null || true; fi
set -euo pipefail
"""


class Session:
    """One shell session per document: runs blocks one after another in
    `cwd` with `env`, keeping variables, functions and the directory."""

    def __init__(self, cwd, env, state_dir):
        self.cwd = Path(cwd)
        self.env = dict(env)
        self.state = Path(state_dir) / "shell-state.sh"
        self.state_dir = Path(state_dir)
        self.n = 0
        if self.state.exists():
            self.state.unlink()
        self.env["__DOC_STATE"] = str(self.state)

    def run(self, text, timeout):
        """(exit status, combined output, seconds) of one block."""
        self.n += 1
        script = self.state_dir / ("block-%02d.sh" % self.n)
        script.write_text(_PROLOGUE + "\n" + text)
        out_path = self.state_dir / ("block-%02d.out" % self.n)
        t0 = time.monotonic()
        with open(out_path, "wb") as out:
            p = subprocess.Popen(["bash", str(script)], cwd=str(self.cwd), env=self.env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
            # whatever the block left running (background jobs, a hung command)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if rc is None:
                p.wait(10)
        output = out_path.read_bytes().decode(errors="replace")
        return rc, output, time.monotonic() - t0


def blank_env(home):
    """The environment of the blocks: the caller's, without CMS_* settings
    (they would change what cmsctl does) and with a HOME of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CMS_") and k not in ("XDG_CONFIG_HOME", "PYTEST_CURRENT_TEST")}
    env["HOME"] = str(home)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def describe_failure(b, text, rc, output, why):
    lines = output.rstrip("\n").split("\n")
    shown = "\n".join(lines[-80:])
    msg = ["%s: %s" % (b.where(), why),
           "--- block (as run, ports rewritten) ---", text.rstrip("\n"),
           "--- exit status %s (expected %d); output%s ---"
           % ("timeout after %ds" % b.timeout if rc is None else rc, b.exit,
              " (last 80 lines)" if len(lines) > 80 else ""),
           shown]
    if b.expected is not None:
        msg += ["--- expected output (%s:%d) ---" % (b.doc, b.expected_line),
                b.expected.rstrip("\n")]
    return "\n".join(msg)
