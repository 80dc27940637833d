"""A private CA and certificates for TLS between natsched components and nats-server.

``natsched tls init DIR`` writes ``ca.pem``, ``server.pem``/``server-key.pem`` (for the
given host names and IPs) and ``client.pem``/``client-key.pem``. Good for a lab or a
first deployment; a site with its own PKI uses that instead.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "natsched"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def cert_identity(name: str) -> str:
    """The e-mail SAN of an identity's client certificate, which nats-server's
    ``verify_and_map`` maps to the user of that name (``a1@natsched``)."""
    return f"{name}@natsched"


def generate(
    directory: Path, hosts: list[str], client_name: str = "natsched", identities: list[str] | None = None
) -> dict[str, Path]:
    """Write a CA, a server certificate for ``hosts`` and a client certificate; return the paths.

    ``identities`` (e.g. ``master``, ``admin``, agent names) each get a client certificate
    ``<name>.pem`` whose e-mail SAN is :func:`cert_identity`: with ``verify_and_map`` the
    certificate *is* the user, so an agent cannot claim another agent's name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _new_ca()
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(
        kind: str, common_name: str, usage: list[x509.ObjectIdentifier], sans: list[x509.GeneralName]
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _validity(x509.CertificateBuilder()).subject_name(_name(common_name)).issuer_name(ca.subject)
        )
        builder = builder.public_key(key.public_key()).serial_number(x509.random_serial_number())
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[kind] = directory / f"{kind}.pem"
        paths[f"{kind}-key"] = directory / f"{kind}-key.pem"
        paths[kind].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(paths[f"{kind}-key"], key)

    # A cluster route is a TLS client of the node it dials: the server certificate that a node
    # presents there needs client-auth usage too, or the route fails ("incompatible key usage").
    server_usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    leaf("server", hosts[0] if hosts else "localhost", server_usage, _sans(hosts))
    leaf("client", client_name, [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    for name in identities or []:
        leaf(name, name, [ExtendedKeyUsageOID.CLIENT_AUTH], [x509.RFC822Name(cert_identity(name))])
    return paths


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=VALID_DAYS)
    )


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign certificates, nothing else."""
    key = ec.generate_private_key(ec.SECP256R1())
    only_signing = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    ca = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name("natsched CA"))
        .issuer_name(_name("natsched CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(only_signing, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, ca


def server_tls_block(paths: dict[str, Path], *, verify_clients: bool = True, map_users: bool = False) -> str:
    """The nats-server ``tls {}`` block for certificates made by :func:`generate`.

    ``map_users``: ``verify_and_map``, the client certificate's e-mail SAN names the user.
    """
    verify = "\n  verify_and_map: true" if map_users else ("\n  verify: true" if verify_clients else "")
    return (
        f'tls {{\n  cert_file: "{paths["server"]}"\n  key_file: "{paths["server-key"]}"\n'
        f'  ca_file: "{paths["ca"]}"{verify}\n  timeout: 2\n}}\n'
    )


def route_tls_block(paths: dict[str, Path]) -> str:
    """The ``tls {}`` block for a cluster's routes (``cluster-tls.conf``): each node presents the
    server certificate (server and client usage) and verifies the others' against the CA."""
    return (
        f'tls {{\n  cert_file: "{paths["server"]}"\n  key_file: "{paths["server-key"]}"\n'
        f'  ca_file: "{paths["ca"]}"\n  verify: true\n  timeout: 2\n}}\n'
    )
