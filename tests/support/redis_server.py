"""A real `redis-server` on a free loopback port, in a temporary folder, for the quota tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

INSTALL = "apt-get install -y redis-server"
PASSWORD = "redis-pass-9c41e07b"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _self_signed(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (it is its own CA); returns its path."""
    cert = folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(folder / "key.pem"), "-out", str(cert), "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert


class RedisServer:
    """One redis-server process, password-protected, that the tests may kill or pause."""

    def __init__(self, folder: Path, *, tls: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail(f"redis-server is missing; `make test` as root installs it ({INSTALL})")
            pytest.skip(f"needs redis-server: {INSTALL}")
        self.port = _free_port()
        self.ca_file: Path | None = None
        listen = ["--port", str(self.port)]
        if tls:  # TLS only, as DigitalOcean's Managed Valkey serves (rediss://)
            self.ca_file = _self_signed(folder)
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                      "--tls-cert-file", str(self.ca_file), "--tls-ca-cert-file",
                      str(self.ca_file), "--tls-key-file", str(folder / "key.pem")]
        self.process = subprocess.Popen(
            [binary, *listen, "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
             "--appendonly", "no", "--requirepass", PASSWORD, "--logfile", ""],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        # Read its log until it says it is ready: no polling, no sleeps.
        seen = []
        for line in self.process.stdout:
            seen.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server exited: " + "".join(seen[-5:]))

    @property
    def url(self) -> str:
        """Its URL, with the password (a secret, like a managed Valkey's)."""
        if self.ca_file is not None:
            return (f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/0"
                    f"?ssl_ca_certs={self.ca_file}")
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as in a crash."""
        self.process.kill()
        self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (a hung Redis)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """End the server if it still runs."""
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
