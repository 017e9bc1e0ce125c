"""The web console's files and its authentication rules (curl and Python ssl, no browser):

  - /console/ and its files: the right Content-Type, a strict Content-Security-Policy (no
    inline script), no framing, served to anyone (they hold no data); a name not in
    console_dir, dot segments and encoded slashes are 404, never a file outside;
  - the session endpoint: the operator's identity and a CSRF token bound to the
    certificate, audited as console_login; 401 without a certificate;
  - unauthenticated API calls: 401 JSON + audit; a viewer trying an operator action: 403
    JSON + operator_forbidden;
  - CSRF: a state change with a browser's markers (Origin, Sec-Fetch-*, Cookie) and no or a
    wrong X-CSRF-Token, or from another origin, is 403 csrf_refused (audited, the handler
    never runs); with the token it goes through; cmsctl/curl without markers need none.
"""

import json
import re

import pytest

import admin_helpers as ah
import helpers as h

pytest_plugins = ["admin_helpers"]


@pytest.fixture(scope="module")
def ccmsd(pki, db):
    cfg = ah.api_config(pki, db)
    cfg["console_dir"] = str(h.ROOT / "console")
    c = h.Cmsd("cmsd-console-auth", cfg)
    c.start()
    yield c
    ah.stop_checked(c)


def test_static_files_headers_and_no_traversal(ccmsd, pki):
    st, hd, body = ah.https_raw(ccmsd, pki, "GET", "/console/")
    assert st == 200 and hd["content-type"] == "text/html; charset=utf-8", (st, hd)
    assert b'<script src="app.js" defer></script>' in body
    csp = hd["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert hd["x-frame-options"] == "DENY" and hd["x-content-type-options"] == "nosniff"
    # No inline script or handler in the page itself (the CSP would block it anyway).
    assert not re.search(rb"<script(?![^>]*\bsrc=)", body) and b" onclick=" not in body
    for name, ctype in (("app.js", "text/javascript; charset=utf-8"),
                        ("app.css", "text/css; charset=utf-8"),
                        ("index.html", "text/html; charset=utf-8")):
        st, hd, body = ah.https_raw(ccmsd, pki, "GET", "/console/" + name)
        assert st == 200 and hd["content-type"] == ctype and body, (name, st, hd)
    for path in ("/console/../README.md", "/console/%2e%2e/README.md", "/console/..%2fREADME.md",
                 "/console/nope.js", "/console/.hidden", "/console/app.js/x",
                 "/console/%2e%2e%2f%2e%2e%2fetc%2fpasswd"):
        st, hd, body = ah.https_raw(ccmsd, pki, "GET", path)
        assert st in (400, 404), (path, st, body)
        assert b"README" not in body and b"root:" not in body, path


def test_session_gives_identity_and_token_and_is_audited(ccmsd, pki, db):
    a0 = db.max_audit_id()
    st, body, rawb = ah.curl(ccmsd, pki, "GET", "/api/v1/console/session", cert="operator1")
    assert st == 200, rawb
    assert body["name"] == "operator1" and body["role"] == "operator"
    assert re.fullmatch(r"[0-9a-f]{64}", body["csrf_token"]) and body["csrf_header"] == "X-CSRF-Token"
    st2, body2, _ = ah.curl(ccmsd, pki, "GET", "/api/v1/console/session", cert="operator2")
    assert body2["csrf_token"] != body["csrf_token"]  # bound to the certificate
    ah.wait_audit(db, a0, lambda r: r["event"] == "console_login"
                  and r["actor"] == "operator:operator1", what="console_login")
    st, body, rawb = ah.curl(ccmsd, pki, "GET", "/api/v1/console/session", cert=None)
    assert st == 401
    ah.assert_json_error(st, body, rawb, "unauthenticated")


def test_unauthenticated_and_viewer_refused_and_audited(ccmsd, pki, db):
    a0 = db.max_audit_id()
    for path in ("/api/v1/vitals/latest", "/api/v1/events", "/api/v1/alarms"):
        st, body, rawb = ah.curl(ccmsd, pki, "GET", path, cert=None)
        assert st == 401 and body["error"] == "unauthenticated", (path, rawb)
    ah.wait_audit(db, a0, lambda r: r["event"] == "http_refused" and r["actor"] == "anonymous"
                  and ah.detail(r)["path"] == "/api/v1/events", what="401 audited")
    st, body, rawb = ah.curl(ccmsd, pki, "POST", "/api/v1/enroll/tokens", cert="viewer1",
                             data={"serial": "MON-0042"})
    assert st == 403 and body["error"] == "forbidden", rawb
    ah.wait_audit(db, a0, lambda r: r["event"] == "operator_forbidden"
                  and r["actor"] == "operator:viewer1", what="operator_forbidden")


def test_csrf_rule(ccmsd, pki, db):
    port = ah.https_port(ccmsd)
    origin = "https://localhost:%d" % port
    body = json.dumps({"serial": "MON-0042", "ttl_s": 600}).encode()
    tok = ah.curl(ccmsd, pki, "GET", "/api/v1/console/session", cert="operator1")[1]["csrf_token"]
    other = ah.curl(ccmsd, pki, "GET", "/api/v1/console/session", cert="operator2")[1]["csrf_token"]
    a0 = db.max_audit_id()
    refused = [
        ({"Origin": origin}, "missing X-CSRF-Token"),
        ({"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, "missing X-CSRF-Token"),
        ({"Cookie": "a=b"}, "missing X-CSRF-Token"),
        ({"Origin": origin, "X-CSRF-Token": "0" * 64}, "invalid X-CSRF-Token"),
        ({"Origin": origin, "X-CSRF-Token": other}, "invalid X-CSRF-Token"),  # another's
        ({"Origin": "https://evil.example", "X-CSRF-Token": tok}, "cross-site request"),
        ({"Origin": "null", "X-CSRF-Token": tok}, "cross-site request"),
        ({"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": tok}, "cross-site request"),
    ]
    for hdrs, why in refused:
        st, hd, out = ah.https_raw(ccmsd, pki, "POST", "/api/v1/enroll/tokens", hdrs, "operator1", body)
        j = json.loads(out)
        assert st == 403 and j["error"] == "csrf_refused" and why in j["detail"], (hdrs, st, j)
    rows = []
    h.wait_until(lambda: len([r for r in ah.audit_rows(db, a0, "csrf_refused")]) == len(refused),
                 15, 0.1, "one csrf_refused row per refusal")
    rows = ah.audit_rows(db, a0, "csrf_refused")
    assert all(r["actor"] == "operator:operator1" for r in rows)
    assert all(ah.detail(r)["path"] == "/api/v1/enroll/tokens" for r in rows)
    assert not ah.audit_rows(db, a0, "enroll_token_created"), "a refused request ran"
    # With the token, from the console's origin: served.
    st, hd, out = ah.https_raw(ccmsd, pki, "POST", "/api/v1/enroll/tokens",
                      {"Origin": origin, "Sec-Fetch-Site": "same-origin", "X-CSRF-Token": tok},
                      "operator1", body)
    assert st == 201, out
    # A client without browser markers (cmsctl, curl) needs no token.
    st, b2, rawb = ah.curl(ccmsd, pki, "POST", "/api/v1/enroll/tokens", cert="operator1",
                           data={"serial": "MON-0043", "ttl_s": 600})
    assert st == 201, rawb
    # Reads are never asked for a token.
    st, hd, out = ah.https_raw(ccmsd, pki, "GET", "/api/v1/whoami", {"Origin": "https://evil.example"},
                      "operator1")
    assert st == 200
