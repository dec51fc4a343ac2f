"""A throw-away self-signed certificate for TLS tests (SIP over TLS/WSS, HTTPS webhooks)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(tmp_path: Path, names: tuple[str, ...] = ("sbc.test", "127.0.0.1")) -> tuple[str, str]:
    """(cert path, key path) of a certificate for `names` (DNS names and IP addresses; by default `sbc.test` and
    127.0.0.1), valid for an hour. Files are named after the first name unless the names are the default."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = []
    for each in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(each)))
        except ValueError:
            alt_names.append(x509.DNSName(each))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    stem = "" if names == ("sbc.test", "127.0.0.1") else f"{names[0]}-"
    cert_path, key_path = tmp_path / f"{stem}cert.pem", tmp_path / f"{stem}key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)
