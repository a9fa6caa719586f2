"""Where `gongji health` asks, and which health listeners Settings accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gongji import healthcheck
from gongji.config import Settings

TLS = {"tls_cert_file": Path("server.pem"), "tls_key_file": Path("server.key")}


def test_the_check_asks_the_health_listener_else_the_plaintext_grpc_port() -> None:
    assert healthcheck.default_target(Settings(grpc_listen="0.0.0.0:50051")) == "127.0.0.1:50051"
    both = Settings(grpc_listen="0.0.0.0:50051", health_listen="0.0.0.0:50052")
    assert healthcheck.default_target(both) == "127.0.0.1:50052"
    assert healthcheck.default_target(Settings(health_listen="[::]:50052", **TLS)) == "127.0.0.1:50052"
    assert healthcheck.default_target(Settings(health_listen="[::1]:50052", **TLS)) == "[::1]:50052"
    # TLS on the gRPC port and no health listener: nothing to ask in plaintext.
    assert healthcheck.default_target(Settings(**TLS)) is None


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:50051"])
def test_a_health_listener_is_host_port_with_a_port_of_its_own(listen: str) -> None:
    with pytest.raises(ValueError, match="GONGJI_HEALTH_LISTEN"):
        Settings(grpc_listen="127.0.0.1:50051", health_listen=listen)
