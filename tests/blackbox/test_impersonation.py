"""A monitor may only write its own data: a message whose sender (MSH-3, or
an OBX-18 equipment id) names another device than the certificate gets AR
with a reason, nothing is stored, and an audit row records the attempt. The
device's other registered identifiers (the EUI-64 real monitors put in MSH-3
component 2 with component 3 = EUI-64) are the same device and accepted."""

import json

import pytest

import helpers as h
from conftest import EUI64, EUI64_DEVICE

# (certificate, MSH-3, extra OBX-18 identifier or None, the device named)
REFUSED = {
    # the issue's case: MON-0002's genuine credentials claiming MON-0001
    "msh3-other-serial": ("bad/impersonator", "MON-0001^MON-0001^L", None, "MON-0001"),
    "msh3-other-eui64": ("MON-0001", "AcmeInc^%s^EUI-64" % EUI64, None, EUI64),
    "msh3-unregistered-serial": ("MON-0001", "MON-7777^MON-7777^L", None, "MON-7777"),
    "obx18-other-eui64": ("MON-0001", "MON-0001^MON-0001^L", EUI64, EUI64),
}


def obx18(ident):
    return ("OBX|13|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.3|97|262688^MDC_DIM_PERCENT^MDC"
            "|||||R|||20261115083000+0100||||%s^^%s^EUI-64" % (ident, ident))


def wait_audit(db, since_id, pred, timeout=20):
    found = []

    def look():
        for r in db.audit_events(since_id):
            if pred(r):
                found.append(r)
                return True
        return False
    try:
        h.wait_until(look, timeout, 0.2, "audit row")
    except AssertionError:
        pytest.fail("no matching cms.audit_events row within %ds; rows since: %s"
                    % (timeout, db.audit_events(since_id)))
    return found[0]


@pytest.mark.parametrize("case", list(REFUSED))
def test_impersonation_refused_and_audited(cmsd, pki, db, connect, case):
    cert, msh3, ident, named = REFUSED[case]
    real = "MON-0002" if cert == "bad/impersonator" else cert
    cid, pt = h.unique("IMP"), h.unique("PT-IMP")
    audit0 = db.max_audit_id()
    since = cmsd.test_log_start
    msg = h.pcd01(real, cid, patient=pt, msh3=msh3,
                  extra_obx=[obx18(ident)] if ident else ())
    with connect(cmsd.port, pki.device(cert)) as c:
        ack = c.request(msg)
    assert ack.code == "AR", "impersonation must be rejected (AR): %r" % ack
    # HL7 table 0357: 204 "Unknown key identifier" (the sender named is not one this
    # connection may write for); 207 "Application internal error" is for AE (README)
    assert ack.err_code == "204", "ERR-3 should be 204: %r" % ack
    assert ack.control_id == cid, ack
    assert len(ack.reason()) >= 8, "AR without a human-readable reason: %r" % ack

    # nothing stored, under either identity
    for dev in ("MON-0001", "MON-0002", "MON-0003"):
        assert db.message_count(dev, cid) == 0, "impersonated message stored under %s" % dev
    assert db.vitals(patient_id=pt) == []

    # an audit row naming the event, the certificate's device and the claim
    row = wait_audit(db, audit0, lambda r: "imperson" in (r["event"] or "").lower())
    text = json.dumps(row)
    assert real in text, "audit row does not name the certificate's device %s: %s" % (real, row)
    assert named in text, "audit row does not name the claimed sender %s: %s" % (named, row)
    # and a log line for this peer
    h.assert_refusal_logged(cmsd, c.local_port, r"(?i)imperson", since)


def test_audit_chain_intact_after_impersonation(cmsd, db):
    assert db.scalar("SELECT cms.audit_verify()") is None


@pytest.mark.parametrize("msh3", [
    "%s^%s^EUI-64" % (EUI64_DEVICE, EUI64),   # serial in component 1, EUI-64 in 2
    "AcmeInc^%s^EUI-64" % EUI64,              # as IHE PCD monitors send it
])
def test_extra_identifier_of_same_device_accepted(cmsd, db, connect, msh3):
    cid, pt = h.unique("EUI"), h.unique("PT-EUI")
    with connect(cmsd.port, EUI64_DEVICE) as c:
        ack = c.request(h.pcd01(EUI64_DEVICE, cid, patient=pt, msh3=msh3,
                                extra_obx=[obx18(EUI64)]))
    assert ack.code == "AA" and ack.control_id == cid, ack
    assert db.message_count(EUI64_DEVICE, cid) == 1
    rows = db.vitals(patient_id=pt)
    assert len(rows) == h.SAMPLE_NOBS + 1
    assert {r["device_serial"] for r in rows} == {EUI64_DEVICE}
