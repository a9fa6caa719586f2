"""A CA, a server certificate and a client certificate as PEM files in a directory of the test's own, for
the client's TLS tests; issued by pki.issue like every other certificate of the suite."""

from __future__ import annotations

from pathlib import Path

from pki import issue


def write_pki(directory: Path) -> dict[str, Path]:
    """ca.pem, server.pem/.key and client.pem/.key issued by it, and other-ca.pem, a CA that issued neither."""
    ca, ca_name, ca_key = issue("gongji test CA", None, ca=True)
    other, _, _ = issue("someone else's CA", None, ca=True)
    server, _, _ = issue("localhost", (ca_name, ca_key), ca=False)
    client, _, _ = issue("POS-CLI", (ca_name, ca_key), ca=False)
    files = {
        "ca": ("ca.pem", ca.cert),
        "other_ca": ("other-ca.pem", other.cert),
        "server_cert": ("server.pem", server.cert),
        "server_key": ("server.key", server.key),
        "client_cert": ("client.pem", client.cert),
        "client_key": ("client.key", client.key),
    }
    paths = {}
    for name, (file, content) in files.items():
        paths[name] = directory / file
        paths[name].write_bytes(content)
    return paths
