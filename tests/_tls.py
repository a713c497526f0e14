"""Test-only TLS material: a self-signed certificate and key for 127.0.0.1, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["self_signed"]


def self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """Write ``<name>.crt`` and ``<name>.key`` (PEM, RSA 2048, one day) into ``directory``.

    The certificate names 127.0.0.1 both as CN and as an IP subjectAltName:
    clients check an IP address against the SAN only. The test is skipped
    where no ``openssl`` command exists (the project has no crypto dependency).
    """
    openssl = shutil.which("openssl") or ("/usr/bin/openssl" if Path("/usr/bin/openssl").exists() else None)
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
