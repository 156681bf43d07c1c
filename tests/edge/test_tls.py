"""The local stack's certificates (relay/edge/tls.py): made once, trusted through its CA."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509

from relay.edge import tls as edge_tls


def test_certificates_are_made_once_and_trusted_through_the_ca(tmp_path: Path) -> None:
    first = edge_tls.ensure(tmp_path)
    pem = first.edge.read_bytes()
    assert edge_tls.ensure(tmp_path).edge.read_bytes() == pem, "kept, not made again"
    assert oct(first.edge.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > \
        datetime.timedelta(days=300)
    # a client that trusts the CA accepts the server certificate for 127.0.0.1
    context = ssl.create_default_context(cafile=str(first.ca))
    context.load_cert_chain(first.edge)  # the key is in the same file: it loads whole
    assert len(first.spki_sha256()) == 44
    # a new CA (the old one lost): the server certificate is made again, signed by it
    (tmp_path / "ca.pem").unlink()
    second = edge_tls.ensure(tmp_path)
    assert second.edge.read_bytes() != pem
    assert x509.load_pem_x509_certificate(second.edge.read_bytes()).issuer == \
        x509.load_pem_x509_certificate(second.ca.read_bytes()).subject
