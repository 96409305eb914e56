"""A TLS + SASL/SCRAM listener on the local Apache Kafka, to prove feedrank against a secured cluster.

``SecuredListener.create(directory)`` makes a throw-away certificate authority and a broker
certificate for ``127.0.0.1``/``localhost`` with the JDK's ``keytool`` (PKCS12 keystore, CA as
PEM for the Python clients) and picks a SCRAM-SHA-256 user and password. ``LocalKafka(secured=...)``
then adds a ``SECURED`` listener (``SASL_SSL``) beside its plaintext one and creates the SCRAM
user when it formats the storage (Kafka's own ``StorageTool --add-scram``). Inter-broker and
controller traffic stays on the plaintext loopback listeners.

For a real cluster none of this is used: point ``FEEDRANK_KAFKA_*`` at the cluster's CA, mechanism
and credentials (README, configuration).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LISTENER = "SECURED"
MECHANISM = "SCRAM-SHA-256"


class CertificateError(RuntimeError):
    """keytool is missing or failed."""


def _keytool(*args: str, cwd: Path) -> None:
    keytool = shutil.which("keytool")
    if keytool is None:
        raise CertificateError("keytool not found: the secured listener needs a JDK 17+ on PATH")
    proc = subprocess.run([keytool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise CertificateError(f"keytool {args[0]} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")


@dataclass(frozen=True)
class SecuredListener:
    """Files and credentials of a test SASL_SSL listener."""

    directory: Path
    ca_pem: Path
    keystore: Path
    store_password: str = field(repr=False)
    username: str
    password: str = field(repr=False)
    mechanism: str = MECHANISM

    @classmethod
    def create(cls, directory: Path, username: str = "feedrank") -> "SecuredListener":
        d = Path(directory).resolve()
        d.mkdir(parents=True, exist_ok=True)
        pw = secrets.token_hex(12)
        san = "SAN=dns:localhost,ip:127.0.0.1"
        common = ["-storetype", "PKCS12", "-storepass", pw, "-keypass", pw]
        _keytool("-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-validity", "30",
                 "-dname", "CN=feedrank test CA", "-ext", "bc:c", "-keystore", "ca.p12", *common, cwd=d)
        _keytool("-exportcert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", "-storepass", pw, "-file", "ca.pem",
                 cwd=d)
        _keytool("-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "30",
                 "-dname", "CN=localhost", "-ext", san, "-keystore", "broker.p12", *common, cwd=d)
        _keytool("-certreq", "-alias", "broker", "-keystore", "broker.p12", "-storepass", pw, "-file", "broker.csr",
                 cwd=d)
        _keytool("-gencert", "-alias", "ca", "-keystore", "ca.p12", "-storepass", pw, "-infile", "broker.csr",
                 "-outfile", "broker.crt", "-rfc", "-ext", san, "-validity", "30", cwd=d)
        _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", "ca.pem", "-keystore", "broker.p12",
                 "-storepass", pw, cwd=d)
        _keytool("-importcert", "-alias", "broker", "-file", "broker.crt", "-keystore", "broker.p12",
                 "-storepass", pw, cwd=d)
        return cls(d, d / "ca.pem", d / "broker.p12", pw, username, secrets.token_hex(16))

    def server_config(self, host: str, port: int) -> dict[str, Any]:
        """What a node's ``server.properties`` adds for this listener (merged into its listener lists)."""
        mech = self.mechanism.lower()
        return {
            f"listener.name.{LISTENER.lower()}.sasl.enabled.mechanisms": self.mechanism,
            f"listener.name.{LISTENER.lower()}.{mech}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"listener.name.{LISTENER.lower()}.ssl.keystore.location": str(self.keystore),
            f"listener.name.{LISTENER.lower()}.ssl.keystore.password": self.store_password,
            f"listener.name.{LISTENER.lower()}.ssl.key.password": self.store_password,
            f"listener.name.{LISTENER.lower()}.ssl.keystore.type": "PKCS12",
        }

    def scram_format_arg(self) -> str:
        """``StorageTool format --add-scram`` argument creating the user."""
        return f"{self.mechanism}=[name={self.username},password={self.password}]"

    def client_env(self, bootstrap: str, password_file: Path | None = None) -> dict[str, str]:
        """The ``FEEDRANK_*`` variables a feedrank process needs to reach this listener."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FEEDRANK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
               "FEEDRANK_KAFKA_SSL_CAFILE": str(self.ca_pem), "FEEDRANK_KAFKA_SASL_MECHANISM": self.mechanism,
               "FEEDRANK_KAFKA_SASL_USERNAME": self.username}
        if password_file is not None:
            env["FEEDRANK_KAFKA_SASL_PASSWORD_FILE"] = str(password_file)
        else:
            env["FEEDRANK_KAFKA_SASL_PASSWORD"] = self.password
        return env


__all__ = ["CertificateError", "LISTENER", "MECHANISM", "SecuredListener"]
