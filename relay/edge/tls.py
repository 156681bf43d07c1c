"""The local stack's own certificates for the edge's TLS listener (https://127.0.0.1:8443).

A small certificate authority of the stack's own (``ca.pem``, kept with its key) signs a
server certificate for ``localhost``, ``127.0.0.1`` and ``::1``; HAProxy reads the chain and
the key from one file (``edge.pem``). Clients trust the CA: ``curl --cacert .ssedge/tls/ca.pem``,
``ssedge load --ca .ssedge/tls/ca.pem``, or a browser told about it. Made once and kept: the
same CA survives restarts of the stack, and the server certificate is made again when it is
missing, near its end, or no longer signed by the CA on disk. A deployment uses its own
certificates (any PEM chain + key HAProxy reads), not these.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 397  # the longest browsers accept for a server certificate
RENEW_DAYS = 30  # a server certificate this close to its end is made again
NAMES = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Certificates:
    ca: Path  # the CA certificate that clients trust
    edge: Path  # the server certificate, its chain and its key, for HAProxy

    def spki_sha256(self) -> str:
        """base64 SHA-256 of the server certificate's public key: what Chromium's
        ``--ignore-certificate-errors-spki-list`` takes."""
        return spki_sha256(x509.load_pem_x509_certificate(self.edge.read_bytes()))


def spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def _make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ssedge local CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ssedge (this checkout)")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(directory / "ca-key.pem", _key_pem(key))
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.not_valid_after_utc < _now():
        return None
    return cert, key


def _server_ok(path: Path, ca: x509.Certificate) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    fresh = cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS)
    return fresh and cert.issuer == ca.subject and _signed_by(cert, ca)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _make_server(path: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    alt = [x509.DNSName(n) for n in NAMES] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = (cert.public_bytes(serialization.Encoding.PEM)
           + ca.public_bytes(serialization.Encoding.PEM) + _key_pem(key))
    _write_private(path, pem)


def ensure(directory: Path) -> Certificates:
    """The CA and the server certificate under ``directory`` (made when missing or stale)."""
    directory.mkdir(parents=True, exist_ok=True)
    loaded = _load_ca(directory)
    ca, ca_key = loaded if loaded is not None else _make_ca(directory)
    edge = directory / "edge.pem"
    if not _server_ok(edge, ca):
        _make_server(edge, ca, ca_key)
    return Certificates(directory / "ca.pem", edge)
