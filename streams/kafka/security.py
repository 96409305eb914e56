"""Kafka connection security (TLS, SASL), one set of settings for every Kafka client feedrank creates.

feedrank talks to Kafka through four client libraries: aiokafka (the table engine and the worker's
services), kafka-python (producing events, admin), confluent-kafka (load tools) and Faust's own
producer. Each takes the same settings in its own spelling; ``kafka_options(library, settings)``
gives them, so no client is created in plaintext by mistake (``tests/unit/repo/test_kafka_clients.py``
fails when a constructor call in ``streams/`` does not pass them).

    FEEDRANK_KAFKA_SECURITY_PROTOCOL   PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    FEEDRANK_KAFKA_SSL_CAFILE          CA bundle (PEM) to trust; unset = the system's
    FEEDRANK_KAFKA_SSL_CERTFILE/KEYFILE client certificate and key (PEM), for mutual TLS
    FEEDRANK_KAFKA_SASL_MECHANISM      PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    FEEDRANK_KAFKA_SASL_USERNAME       the SASL user
    FEEDRANK_KAFKA_SASL_PASSWORD_FILE  file holding the password (or FEEDRANK_KAFKA_SASL_PASSWORD)

The password is read when a client is made and never logged; the settings object shows it masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIBRARIES = ("aiokafka", "kafka-python", "confluent", "faust")


class KafkaSecurityError(ValueError):
    """The Kafka security settings are incomplete or cannot be used; the message names the setting."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def of(cls, settings: Any) -> "KafkaSecurity":
        protocol = settings.kafka_security_protocol
        password = None
        if settings.kafka_sasl_password_file is not None:
            try:
                password = Path(settings.kafka_sasl_password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise KafkaSecurityError(f"FEEDRANK_KAFKA_SASL_PASSWORD_FILE={settings.kafka_sasl_password_file}: "
                                         f"cannot read it ({exc.strerror})") from None
        elif settings.kafka_sasl_password is not None:
            password = settings.kafka_sasl_password.get_secret_value()
        sec = cls(protocol, settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile,
                  settings.kafka_sasl_mechanism, settings.kafka_sasl_username, password)
        if sec.sasl:
            missing = [name for name, v in (("FEEDRANK_KAFKA_SASL_MECHANISM", sec.mechanism),
                                            ("FEEDRANK_KAFKA_SASL_USERNAME", sec.username),
                                            ("FEEDRANK_KAFKA_SASL_PASSWORD_FILE (or _PASSWORD)", password))
                       if not v]
            if missing:
                raise KafkaSecurityError(f"FEEDRANK_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
        for name, path in (("FEEDRANK_KAFKA_SSL_CAFILE", sec.cafile), ("FEEDRANK_KAFKA_SSL_CERTFILE", sec.certfile),
                           ("FEEDRANK_KAFKA_SSL_KEYFILE", sec.keyfile)):
            if path is not None and not Path(path).is_file():
                raise KafkaSecurityError(f"{name}={path}: no such file")
        if (sec.certfile is None) != (sec.keyfile is None):
            raise KafkaSecurityError("FEEDRANK_KAFKA_SSL_CERTFILE and FEEDRANK_KAFKA_SSL_KEYFILE go together")
        return sec

    def describe(self) -> str:
        """One log line, without the password."""
        parts = [self.protocol]
        if self.tls:
            parts.append(f"CA {self.cafile or 'system'}" + (", client certificate" if self.certfile else ""))
        if self.sasl:
            parts.append(f"{self.mechanism} as {self.username!r}")
        return ", ".join(parts)

    def _ssl_context(self):
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)
        if self.certfile is not None:
            ctx.load_cert_chain(str(self.certfile), str(self.keyfile))
        return ctx

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments of aiokafka's clients; kafka-python's take the same names."""
        if self.protocol == "PLAINTEXT":
            return {}
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            out["ssl_context"] = self._ssl_context()
        if self.sasl:
            out.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        return out

    kafka_python = aiokafka

    def confluent(self) -> dict[str, Any]:
        if self.protocol == "PLAINTEXT":
            return {}
        out: dict[str, Any] = {"security.protocol": self.protocol}
        if self.cafile is not None:
            out["ssl.ca.location"] = str(self.cafile)
        if self.certfile is not None:
            out.update({"ssl.certificate.location": str(self.certfile), "ssl.key.location": str(self.keyfile)})
        if self.sasl:
            out.update({"sasl.mechanism": self.mechanism, "sasl.username": self.username,
                        "sasl.password": self.password})
        return out

    def faust(self) -> dict[str, Any]:
        """``faust.App`` keyword arguments: ``broker_credentials``."""
        if self.protocol == "PLAINTEXT":
            return {}
        import faust

        ctx = self._ssl_context() if self.tls else None
        if self.sasl:
            if self.mechanism == "PLAIN":
                creds: Any = faust.SASLCredentials(username=self.username, password=self.password, ssl_context=ctx)
            else:
                creds = faust.SASLCredentials(username=self.username, password=self.password, ssl_context=ctx,
                                              mechanism=self.mechanism)
        else:
            creds = faust.SSLCredentials(ctx)
        return {"broker_credentials": creds}


def kafka_options(library: str, settings: Any = None) -> dict[str, Any]:
    """The security keyword arguments (or config entries, for confluent) of ``library``'s clients.

    ``settings`` defaults to the process's (``FEEDRANK_*`` environment)."""
    if library not in LIBRARIES:
        raise ValueError(f"unknown Kafka client library {library!r}; one of {LIBRARIES}")
    if settings is None:
        from streams.settings import get_settings

        settings = get_settings()
    return getattr(KafkaSecurity.of(settings), library.replace("-", "_"))()


def explain_connection_failure(exc: BaseException, bootstrap: str, settings: Any = None) -> str | None:
    """An operator-facing reason for a failed first connection when the security settings are the likely
    cause (authentication refused, TLS handshake, plaintext against a TLS port), or None."""
    if settings is None:
        from streams.settings import get_settings

        settings = get_settings()
    sec = KafkaSecurity.of(settings)
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "authentication" in low or "sasl" in low:
        return (f"Kafka at {bootstrap} refused the SASL login of {sec.username!r} ({sec.mechanism}): check "
                f"FEEDRANK_KAFKA_SASL_USERNAME, FEEDRANK_KAFKA_SASL_PASSWORD_FILE and FEEDRANK_KAFKA_SASL_MECHANISM")
    if "certificate" in low or "ssl" in low or "handshake" in low:
        return (f"TLS to Kafka at {bootstrap} failed ({text[:200]}): check FEEDRANK_KAFKA_SSL_CAFILE and "
                f"FEEDRANK_KAFKA_SECURITY_PROTOCOL")
    if "nobrokersavailable" in low or "unable to bootstrap" in low or "timed out" in low:
        probed = probe(bootstrap, sec)
        if probed is not None:
            return probed
        return (f"no answer from Kafka at {bootstrap} with FEEDRANK_KAFKA_SECURITY_PROTOCOL={sec.protocol} "
                f"({sec.describe()}): a wrong protocol for the listener, refused credentials or an unreachable "
                f"address all look like this; check the protocol and credentials, then the address")
    return None


def probe(bootstrap: str, sec: KafkaSecurity, timeout_s: float = 10.0) -> str | None:
    """Ask librdkafka, which tells authentication and TLS failures apart, why ``bootstrap`` does not answer."""
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError:  # pragma: no cover - a dependency
        return None
    import logging as _logging

    errors: list[str] = []

    class _Collect(_logging.Handler):
        def emit(self, record: _logging.LogRecord) -> None:
            errors.append(record.getMessage())

    sink = _logging.getLogger("feedrank-kafka-probe")
    sink.propagate = False
    sink.handlers[:] = [_Collect()]
    # librdkafka names an authentication or TLS failure only in its log, which it hands to ``logger``
    admin = AdminClient({"bootstrap.servers": bootstrap, **sec.confluent(), "logger": sink})
    try:
        admin.list_topics(timeout=timeout_s)
        return None
    except KafkaException as exc:
        errors.append(str(exc))
    admin.poll(0.5)  # log lines are handed over on poll
    text = " | ".join(errors).lower()
    if "authentication" in text:
        return (f"Kafka at {bootstrap} refused the SASL login of {sec.username!r} ({sec.mechanism}): check "
                f"FEEDRANK_KAFKA_SASL_USERNAME, FEEDRANK_KAFKA_SASL_PASSWORD_FILE and FEEDRANK_KAFKA_SASL_MECHANISM")
    if "ssl" in text or "certificate" in text or "handshake" in text:
        return (f"TLS to Kafka at {bootstrap} failed: check FEEDRANK_KAFKA_SSL_CAFILE (the CA that signed the "
                f"brokers' certificates) and FEEDRANK_KAFKA_SECURITY_PROTOCOL")
    return None


__all__ = ["KafkaSecurity", "KafkaSecurityError", "LIBRARIES", "explain_connection_failure", "kafka_options", "probe"]
