/* test_peer.c - who may talk (server/svc/peer.c, peer_decide): the same decision for the
 * MLLP listener (devices only) and the HTTPS listener (devices, operators, anonymous).
 * Each refusal: no certificate where one is required, no usable CN, a certificate not
 * issued directly by an accepted issuing CA, a device not registered, each status other
 * than active, the registry unavailable; and a resumed session still goes to the
 * registry. Refusals for the certificate and by the registry are audited, except when
 * the registry could not answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cms_err.h"
#include "peer.h"

static const peer_policy mllp = {.listener = "mllp"};
static const peer_policy https = {.listener = "https", .anonymous = true, .operators = true};

/* A verified certificate with a usable CN from the given issuing CA. */
static tls_peer cert_from(enum tls_issuer issuer, const char *cn)
{
    tls_peer p = {.version = "TLSv1.3", .has_cert = true, .cn_ok = true, .issuer = issuer};
    snprintf(p.cn, sizeof(p.cn), "%s", cn);
    p.fingerprint[0] = 0xab;
    p.not_after = 1900000000;
    return p;
}

static void assert_refused(peer_decision d, enum peer_verdict v, const char *reason, bool audit)
{
    assert_int_equal(d.verdict, v);
    assert_non_null(d.reason);
    assert_string_equal(d.reason, reason);
    assert_int_equal(d.audit, audit);
}

static void assert_accepted(peer_decision d, enum peer_verdict v)
{
    assert_int_equal(d.verdict, v);
    assert_null(d.reason);
    assert_false(d.audit);
}

static void test_no_certificate(void **state)
{
    (void)state;
    tls_peer none = {.version = "TLSv1.3"};
    /* MLLP requires one (TLS refuses it first; the decision agrees). */
    assert_refused(peer_decide(&mllp, &none, NULL), PEER_TLS_REFUSED,
                   "no client certificate presented", true);
    /* HTTPS: anonymous (public routes, EST bootstrap), never the registry. */
    assert_accepted(peer_decide(&https, &none, NULL), PEER_ANONYMOUS);
}

static void test_no_usable_cn(void **state)
{
    (void)state;
    tls_peer p = cert_from(TLS_ISSUER_DEVICE_CA, "");
    p.cn_ok = false;
    assert_refused(peer_decide(&mllp, &p, NULL), PEER_TLS_REFUSED,
                   "certificate subject has no usable CN", true);
    assert_refused(peer_decide(&https, &p, NULL), PEER_TLS_REFUSED,
                   "certificate subject has no usable CN", true);
    /* An operator certificate needs a CN too (it names the actor in the audit log). */
    p.issuer = TLS_ISSUER_OPERATOR_CA;
    assert_refused(peer_decide(&https, &p, NULL), PEER_TLS_REFUSED,
                   "certificate subject has no usable CN", true);
    /* Even a registry answer does not make it a device. */
    peer_registry active = {.status = CMS_OK, .device_status = "active"};
    assert_int_equal(peer_decide(&mllp, &p, &active).verdict, PEER_TLS_REFUSED);
}

static void test_wrong_issuer(void **state)
{
    (void)state;
    /* Chains to a trusted root but not issued directly by the device CA. */
    tls_peer p = cert_from(TLS_ISSUER_NONE, "MON-0001");
    assert_refused(peer_decide(&mllp, &p, NULL), PEER_TLS_REFUSED,
                   "certificate not issued by the device CA", true);
    assert_refused(peer_decide(&https, &p, NULL), PEER_TLS_REFUSED,
                   "certificate not issued by the device CA or an operator CA", true);
    /* An operator certificate on the monitors' listener. */
    p.issuer = TLS_ISSUER_OPERATOR_CA;
    assert_refused(peer_decide(&mllp, &p, NULL), PEER_TLS_REFUSED,
                   "certificate not issued by the device CA", true);
    /* The registry never overrides the issuer. */
    p.issuer = TLS_ISSUER_NONE;
    peer_registry active = {.status = CMS_OK, .device_status = "active"};
    assert_int_equal(peer_decide(&mllp, &p, &active).verdict, PEER_TLS_REFUSED);
}

static void test_operator(void **state)
{
    (void)state;
    tls_peer p = cert_from(TLS_ISSUER_OPERATOR_CA, "alice");
    p.role = TLS_ROLE_ADMIN;
    /* Operators are not in the device registry: decided at once. */
    assert_accepted(peer_decide(&https, &p, NULL), PEER_OPERATOR);
}

static void test_device_asks_registry(void **state)
{
    (void)state;
    tls_peer p = cert_from(TLS_ISSUER_DEVICE_CA, "MON-0001");
    assert_accepted(peer_decide(&mllp, &p, NULL), PEER_ASK_REGISTRY);
    assert_accepted(peer_decide(&https, &p, NULL), PEER_ASK_REGISTRY);
    peer_registry active = {.status = CMS_OK, .device_status = "active"};
    assert_accepted(peer_decide(&mllp, &p, &active), PEER_DEVICE);
    assert_accepted(peer_decide(&https, &p, &active), PEER_DEVICE);
}

static void test_not_registered(void **state)
{
    (void)state;
    tls_peer p = cert_from(TLS_ISSUER_DEVICE_CA, "MON-9999");
    peer_registry none = {.status = CMS_EPERM};
    assert_refused(peer_decide(&mllp, &p, &none), PEER_DEVICE_REFUSED, "device not registered",
                   true);
    assert_refused(peer_decide(&https, &p, &none), PEER_DEVICE_REFUSED, "device not registered",
                   true);
}

static void test_each_inactive_status(void **state)
{
    (void)state;
    tls_peer p = cert_from(TLS_ISSUER_DEVICE_CA, "MON-0097");
    static const char *const statuses[] = {"pending", "revoked", "decommissioned", "Active"};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        peer_registry reg = {.status = CMS_OK, .device_status = statuses[i]};
        assert_refused(peer_decide(&mllp, &p, &reg), PEER_DEVICE_REFUSED, statuses[i], true);
        assert_refused(peer_decide(&https, &p, &reg), PEER_DEVICE_REFUSED, statuses[i], true);
    }
    /* A status the registry left empty is no status to show: still refused. */
    peer_registry empty = {.status = CMS_OK, .device_status = ""};
    assert_refused(peer_decide(&mllp, &p, &empty), PEER_DEVICE_REFUSED, "device not active", true);
}

static void test_registry_unavailable(void **state)
{
    (void)state;
    tls_peer p = cert_from(TLS_ISSUER_DEVICE_CA, "MON-0001");
    /* The database away, cmsd shutting down, the control queue full: refused, and not
     * audited (the audit row would go to the same unavailable database). */
    static const int statuses[] = {CMS_EUNAVAIL, CMS_ECLOSED, CMS_ELIMIT};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        peer_registry reg = {.status = statuses[i]};
        assert_refused(peer_decide(&mllp, &p, &reg), PEER_DEVICE_REFUSED,
                       "device registry unavailable", false);
        assert_refused(peer_decide(&https, &p, &reg), PEER_DEVICE_REFUSED,
                       "device registry unavailable", false);
    }
}

static void test_resumed_session_still_checked(void **state)
{
    (void)state;
    /* A resumed session skipped certificate verification: its device may have been
     * revoked since the full handshake. It goes to the registry all the same. */
    tls_peer p = cert_from(TLS_ISSUER_DEVICE_CA, "MON-0098");
    p.resumed = true;
    assert_accepted(peer_decide(&mllp, &p, NULL), PEER_ASK_REGISTRY);
    assert_accepted(peer_decide(&https, &p, NULL), PEER_ASK_REGISTRY);
    peer_registry revoked = {.status = CMS_OK, .device_status = "revoked"};
    assert_refused(peer_decide(&mllp, &p, &revoked), PEER_DEVICE_REFUSED, "revoked", true);
    assert_refused(peer_decide(&https, &p, &revoked), PEER_DEVICE_REFUSED, "revoked", true);
    peer_registry active = {.status = CMS_OK, .device_status = "active"};
    assert_accepted(peer_decide(&mllp, &p, &active), PEER_DEVICE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_certificate),
        cmocka_unit_test(test_no_usable_cn),
        cmocka_unit_test(test_wrong_issuer),
        cmocka_unit_test(test_operator),
        cmocka_unit_test(test_device_asks_registry),
        cmocka_unit_test(test_not_registered),
        cmocka_unit_test(test_each_inactive_status),
        cmocka_unit_test(test_registry_unavailable),
        cmocka_unit_test(test_resumed_session_still_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
