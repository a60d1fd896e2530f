"""Local credentials for a secure Flower deployment: ``python -m fedpurel_lite flower certs DIR``.

:func:`make_credentials` writes, into a folder the user chooses (never into the repository):

- ``ca.crt`` / ``ca.key`` -- a local certificate authority (EC P-384, self-signed);
- ``server.pem`` / ``server.key`` -- the SuperLink's TLS certificate, signed by that CA, valid for
  ``localhost``, ``127.0.0.1`` and every extra host name or IP address given;
- ``supernode_<k>`` / ``supernode_<k>.pub`` -- one EC P-384 key pair per SuperNode in OpenSSH format,
  the format ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read.

The SuperLink gets ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``,
every SuperNode and the ``flwr`` CLI get ``ca.crt`` as their root certificate, and each SuperNode its
own private key. Private keys are written with mode 0600.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    """Write ``data`` to ``path`` (mode 0600 for private keys, created so from the start)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _subject_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_ca(days: int = 30) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh CA key and self-signed CA certificate valid for ``days`` days."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpurel-lite local CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA384()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str] = (),
                     days: int = 30) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server key and certificate signed by the CA, valid for localhost, 127.0.0.1 and ``hosts``."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpurel-lite superlink")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return key, cert


def make_node_keys(out_dir: str | Path, names: Sequence[str]) -> list[tuple[Path, Path]]:
    """One EC P-384 key pair per name, OpenSSH format: ``(private, public)`` paths ``<name>``, ``<name>.pub``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        pairs.append((_write(out / name, private, private=True), _write(out / f"{name}.pub", public + b"\n")))
    return pairs


#: bounds of the options: a certificate valid at least a day and at most ten years; nodes a deployment can hold
MAX_DAYS, MAX_NODES, MAX_HOSTS = 3650, 1000, 100
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(host: str) -> None:
    """``host`` is an IP address or an ASCII DNS name (labels of letters, digits and inner hyphens).

    Raises
    ------
    ConfigError
        Naming the host.
    """
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not (0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))):
        raise ConfigError(f"--host {host!r}: allowed an IP address or a DNS name (ASCII letters, digits, hyphens "
                          "and dots, at most 253 characters)")


def check_options(out: Path, num_nodes: int, hosts: Sequence[str], days: int) -> None:
    """Every option of ``flower certs`` checked before any key is made or file written.

    Raises
    ------
    ConfigError
        Naming the option, the value and what is allowed.
    """
    from ..engine.preflight import check_folder_destination

    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"--days {days}: allowed [1, {MAX_DAYS}] (certificate validity in days)")
    if not 0 <= num_nodes <= MAX_NODES:
        raise ConfigError(f"--nodes {num_nodes}: allowed [0, {MAX_NODES}]")
    if len(hosts) > MAX_HOSTS:
        raise ConfigError(f"--host: {len(hosts)} names; at most {MAX_HOSTS} allowed")
    for host in hosts:
        check_host(host)
    names = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, *(f"supernode_{k}{x}" for k in range(num_nodes)
                                                          for x in ("", ".pub"))]
    check_folder_destination(out, "DIR", files=names)


def make_credentials(out_dir: str | Path, num_nodes: int, hosts: Sequence[str] = (), days: int = 30,
                     overwrite: bool = False) -> dict[str, Path]:
    """Write the CA, the SuperLink's certificate and ``num_nodes`` SuperNode key pairs into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Target folder (created; must not already hold credentials unless ``overwrite``).
    num_nodes : int
        SuperNode key pairs to write (``supernode_0`` .. ``supernode_<num_nodes - 1>``).
    hosts : sequence of str
        Extra host names / IP addresses the SuperLink is reached at (besides localhost and 127.0.0.1).
    days : int
        Validity of the certificates.
    overwrite : bool
        Replace credentials already in ``out_dir``.

    Returns
    -------
    dict
        ``ca``, ``ca_key``, ``server_cert``, ``server_key`` paths and ``node_<k>`` private-key paths.
    """
    out = Path(out_dir)
    check_options(out, num_nodes, hosts, days)
    if (out / CA_CERT).exists() and not overwrite:
        raise ConfigError(f"{out} already holds credentials ({CA_CERT}); pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(days)
    server_key, server_cert = make_server_cert(ca_key, ca_cert, hosts, days)
    paths = {"ca": _write(out / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM)),
             "ca_key": _write(out / CA_KEY, _key_pem(ca_key), private=True),
             "server_cert": _write(out / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM)),
             "server_key": _write(out / SERVER_KEY, _key_pem(server_key), private=True)}
    for k, (private, _) in enumerate(make_node_keys(out, [f"supernode_{k}" for k in range(num_nodes)])):
        paths[f"node_{k}"] = private
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedpurel_lite flower certs DIR [--nodes N] [--host NAME ...] [--days D] [--overwrite]``."""
    p = argparse.ArgumentParser(prog="python -m fedpurel_lite flower certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="DIR", help="folder for the credentials (keep it out of version control)")
    p.add_argument("--nodes", type=int, default=20, help="SuperNode key pairs to write (default 20)")
    p.add_argument("--host", nargs="*", default=[], help="extra host names / IPs of the SuperLink")
    p.add_argument("--days", type=int, default=30, help="certificate validity in days (default 30)")
    p.add_argument("--overwrite", action="store_true", help="replace credentials already in DIR")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(list(argv) if argv is not None else None)
    paths = make_credentials(args.out, args.nodes, args.host, args.days, args.overwrite)
    print(f"wrote a CA, the SuperLink certificate and {args.nodes} SuperNode key pairs to {args.out}")
    print(f"  SuperLink: --ssl-ca-certfile {paths['ca']} --ssl-certfile {paths['server_cert']} "
          f"--ssl-keyfile {paths['server_key']} --enable-supernode-auth")
    print(f"  SuperNode k: --root-certificates {paths['ca']} --auth-supernode-private-key {args.out}/supernode_k")
    print(f"  register node k: flwr supernode register {args.out}/supernode_k.pub <connection>")
    return 0
