"""A client certificate that chains to a trusted root but was not issued by
the device CA itself (here: signed directly by the root, CN=MON-0001,
clientAuth) is refused on the MLLP listener: identity comes only from the
device CA."""
import subprocess

import helpers as h


def _root_issued_client_cert(pki, out_dir):
    key, csr, crt = out_dir / "root-issued.key", out_dir / "root-issued.csr", \
        out_dir / "root-issued.crt"
    ext = out_dir / "root-issued.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-subj",
                    "/CN=MON-0001", "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki.root_ca),
                    "-CAkey", str(pki.path("root-ca.key")), "-CAcreateserial", "-days", "2",
                    "-extfile", str(ext), "-out", str(crt)], check=True, capture_output=True)
    key.chmod(0o600)
    return str(crt), str(key)


def test_root_issued_client_cert_refused(cmsd, pki, db, tmp_path):
    since = cmsd.test_log_start
    cert_key = _root_issued_client_cert(pki, tmp_path)
    before = db.scalar("SELECT count(*) FROM cms.messages")
    local, how = h.expect_refused(pki, cmsd.port, cert_key,
                                  h.pcd01("MON-0001", h.unique("ROOTISSUED"),
                                          patient=h.unique("PT")))
    assert local is not None, how
    h.assert_refusal_logged(cmsd, local, r"not issued by the device CA", since)
    assert db.scalar("SELECT count(*) FROM cms.messages") == before
    h.good_client_still_served(cmsd, pki)
