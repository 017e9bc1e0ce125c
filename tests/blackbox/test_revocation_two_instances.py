"""Two cmsd instances on one database: a revocation made through one
instance's API closes the device's session on the other within 1 s (the
NOTIFY reaches every instance), and both serve the same CRL."""

import time

import est_helpers as eh
import helpers as h
from est_helpers import work  # noqa: F401  (fixture)
from test_revocation import CLOSE_WITHIN, Streamer, crl_number, crl_verify, fetch_crl


def test_revocation_through_one_closes_on_the_other(pki, db, work):
    a = eh.start_est_cmsd(pki, db, "cmsd-est-a", workers=2)
    b = eh.start_est_cmsd(pki, db, "cmsd-est-b", workers=2)
    try:
        serial, chain, key, pem = eh.enrolled_device(a, db, work, pki)
        streamers = []
        for _ in range(3):  # several connections, likely on both workers of b
            s = Streamer(h.MllpClient(b.port, h.client_context(pki, chain, key)), serial)
            s.start()
            streamers.append(s)
        for s in streamers:
            assert s.first_ack.wait(20), "no ACK from instance b"
        since_b = b.log_size()
        t0 = time.monotonic()
        st, body = eh.api(a, "POST", "/api/v1/devices/%s/revoke" % serial,
                          data={"reason": "keyCompromise"})
        assert st == 200, body
        for s in streamers:
            s.join(10)
            assert s.closed_at is not None, "instance b kept the revoked device's session"
            assert s.closed_at - t0 < CLOSE_WITHIN, "closed on b %.3fs after the request" % (
                s.closed_at - t0)
        b.wait_log(r"event=revocation_close device=%s" % serial, since_b, timeout=5)
        local, how = h.expect_refused(pki, b.port, (chain, key),
                                      h.pcd01(serial, h.unique("B"), patient="PT-B"))
        assert local is not None, how
        # Both instances publish the same CRL, which lists the certificate.
        crl_a, crl_b = fetch_crl(a, work, "a"), fetch_crl(b, work, "b")
        assert crl_number(crl_a) == crl_number(crl_b) == body["crl_number"]
        for crl in (crl_a, crl_b):
            rc, out = crl_verify(pki, crl, pem)
            assert rc != 0 and "certificate revoked" in out, out
    finally:
        eh.stop_cmsd(a)
        eh.stop_cmsd(b)
