"""Throw-away X.509 certificates for tests of the daemon's TLS listener (the `cryptography`
package, a dev dependency).

    ca = CertificateAuthority("tidegate test CA")
    server = ca.issue("tidegate", ips=["127.0.0.1"], server=True)     # SAN IP 127.0.0.1
    client = ca.issue("operator", client=True)
    expired = ca.issue("old", client=True, valid_days=(-30, -1))       # expired yesterday
    rogue = self_signed("operator", client=True)
    paths = client.write(tmp_path, "client")                           # (cert.pem, key.pem)

Keys are ECDSA P-256 (fast to generate); nothing here is fit for production.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Writes STEM.pem and STEM.key (mode 0600) into `directory`; returns their paths."""
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return cert, key


def _build(subject: str, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
           key: ec.EllipticCurvePrivateKey, *, ca: bool, ips: Sequence[str] = (), dns: Sequence[str] = (),
           server: bool = False, client: bool = False,
           valid_days: tuple[int, int] = (-1, 30)) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now + datetime.timedelta(days=valid_days[0]))
               .not_valid_after(now + datetime.timedelta(days=valid_days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    return Issued(cert.public_bytes(serialization.Encoding.PEM),
                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, common_name: str = "tidegate test CA") -> None:
        self.key = _key()
        self.cert = _build(common_name, _name(common_name), self.key, self.key, ca=True,
                           valid_days=(-1, 365))

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, stem: str) -> Path:
        """Writes the CA certificate (no key) as STEM.pem; returns its path."""
        path = directory / f"{stem}.pem"
        path.write_bytes(self.cert_pem)
        return path

    def issue(self, common_name: str, *, ips: Sequence[str] = (), dns: Sequence[str] = (),
              server: bool = False, client: bool = False, valid_days: tuple[int, int] = (-1, 30)) -> Issued:
        """A leaf certificate signed by this CA; `valid_days` = (not before, not after) in days from now."""
        key = _key()
        cert = _build(common_name, self.cert.subject, self.key, key, ca=False, ips=ips, dns=dns,
                      server=server, client=client, valid_days=valid_days)
        return _pem(cert, key)


def self_signed(common_name: str, *, ips: Sequence[str] = (), server: bool = False,
                client: bool = False) -> Issued:
    """A leaf certificate that signs itself (no CA vouches for it)."""
    key = _key()
    cert = _build(common_name, _name(common_name), key, key, ca=False, ips=ips, server=server, client=client)
    return _pem(cert, key)
