"""Certificates made on the fly for TLS tests: a CA, a server certificate for localhost and 127.0.0.1, and
client certificates, as PEM files in a directory of the test's own."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def _ca(subject: str) -> tuple[bytes, Issuer]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    cert = _builder(name, name, key).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    ).sign(key, hashes.SHA256())  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM), (name, key)


def _leaf(subject: str, issuer: Issuer) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        _builder(name, issuer[0], key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .sign(issuer[1], hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=2))
    )


def write_pki(directory: Path) -> dict[str, Path]:
    """ca.pem, server.pem/.key and client.pem/.key issued by it, and other-ca.pem, a CA that issued neither."""
    ca, issuer = _ca("gongji test CA")
    other, _ = _ca("someone else's CA")
    server_cert, server_key = _leaf("localhost", issuer)
    client_cert, client_key = _leaf("POS-CLI", issuer)
    files = {
        "ca": ("ca.pem", ca),
        "other_ca": ("other-ca.pem", other),
        "server_cert": ("server.pem", server_cert),
        "server_key": ("server.key", server_key),
        "client_cert": ("client.pem", client_cert),
        "client_key": ("client.key", client_key),
    }
    paths = {}
    for name, (file, content) in files.items():
        paths[name] = directory / file
        paths[name].write_bytes(content)
    return paths
