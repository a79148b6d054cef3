"""ACME client (RFC 8555) over the `acme` library (certbot's): one call issues a certificate for a set of names.

    AcmeClient(settings).issue(names, key_pem, challenge) -> full chain PEM (leaf first)

``challenge`` is a ``functions._core.model.ports.Challenge``: ``kind`` "dns-01" or "http-01", ``present(name,
token, value)`` before the CA is told to validate, ``cleanup(name, token, value)`` afterwards (always, also on
failure). For dns-01 ``value`` is the TXT value for ``_acme-challenge.<name>``; for http-01 it is the key
authorization to serve at ``http://<name>/.well-known/acme-challenge/<token>``. The caller owns the certificate's
private key (``key_pem``, PEM) and stores it; the adapter only signs the CSR with it.

Every failure of the CA (unreachable, 5xx, badNonce beyond the library's retry, an invalid authorization, a
timeout) raises CaUnavailable, a transient error: the event is retried, never silently skipped. The account key
is ``acme.account_key`` (a secret reference) or, when unset, one generated per process; the account is registered
(or found again, RFC 8555 7.3.1) on first use and again after the CA forgot it (Pebble keeps accounts in memory).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from functions._core.platform.errors import CaUnavailable, ConfigError

if TYPE_CHECKING:
    from functions._core.model.ports import Challenge
    from functions._core.platform.config import AcmeSettings

log = logging.getLogger("mailplane.acme")
KINDS = ("dns-01", "http-01")


def _jwk(pem: bytes) -> tuple[Any, Any]:
    from josepy.jwa import ES256, RS256
    from josepy.jwk import JWKEC, JWKRSA

    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key), ES256
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key), RS256
    raise ConfigError("acme.account_key must be an EC P-256 or RSA private key (PEM)")


def new_key_pem() -> str:
    """A fresh EC P-256 private key, PEM (PKCS#8): for an account or for a certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


class AcmeClient:
    """One ACME account on one directory; thread-safe (one order at a time per client)."""

    def __init__(self, settings: AcmeSettings) -> None:
        self._s = settings
        account = settings.account_key.reveal() if settings.account_key is not None else new_key_pem()
        self._jwk, self._alg = _jwk(account.encode("ascii"))
        self._client: Any = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- account

    def _connect(self, *, fresh: bool = False) -> Any:
        from acme import client, errors, messages

        if self._client is not None and not fresh:
            return self._client
        verify: Any = self._s.ca_file or True  # handed to requests' ``verify``: a CA bundle path works there
        net = client.ClientNetwork(
            self._jwk, alg=self._alg, user_agent="mailplane", verify_ssl=verify, timeout=self._s.timeout_seconds
        )
        directory = client.ClientV2.get_directory(self._s.directory, net)
        acme = client.ClientV2(directory, net=net)
        reg = messages.NewRegistration.from_data(email=self._s.contact or None, terms_of_service_agreed=True)
        try:
            acme.new_account(reg)
        except errors.ConflictError as exc:  # the key has an account already: use it (RFC 8555 7.3.1)
            net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        self._client = acme
        return acme

    # ---------------------------------------------------------------- issuance

    def issue(self, names: Sequence[str], key_pem: str, challenge: Challenge) -> str:
        """Order a certificate for ``names`` (the first is the subject) with ``key_pem``; returns the full chain.

        Raises:
            CaUnavailable: the CA failed or did not validate in ``acme.timeout_seconds`` (transient).
            ConfigError: an unknown challenge kind.
        """
        if challenge.kind not in KINDS:
            raise ConfigError(f"unknown ACME challenge kind {challenge.kind!r} (one of {', '.join(KINDS)})")
        if not names:
            raise ConfigError("a certificate needs at least one name")
        with self._lock:
            try:
                return self._issue(list(names), key_pem, challenge)
            except CaUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - every CA/library failure is a transient CA failure
                self._client = None  # next call re-reads the directory and the account (a restarted CA)
                raise CaUnavailable(f"ACME {challenge.kind} for {names[0]}: {_describe(exc)}") from None

    def _issue(self, names: list[str], key_pem: str, challenge: Challenge) -> str:
        from acme import crypto_util, errors, messages

        csr = crypto_util.make_csr(key_pem.encode("ascii"), names)
        acme = self._connect()
        try:
            order = acme.new_order(csr)
        except errors.Error as exc:
            if "accountDoesNotExist" not in str(exc):
                raise
            acme = self._connect(fresh=True)  # the CA forgot the account (Pebble restarted): register again
            order = acme.new_order(csr)
        presented: list[tuple[str, str, str]] = []
        try:
            answers = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # validated before (the CA reuses an authorization)
                name = authz.body.identifier.value
                chall = _pick(authz.body.challenges, challenge.kind)
                if chall is None:
                    raise CaUnavailable(f"ACME: the CA offers no {challenge.kind} challenge for {name}")
                response, validation = chall.response_and_validation(self._jwk)
                token = chall.chall.encode("token")
                challenge.present(name, token, validation)
                presented.append((name, token, validation))
                answers.append((chall, response))
            for chall, response in answers:
                acme.answer_challenge(chall, response)
            deadline = dt.datetime.now() + dt.timedelta(seconds=self._s.timeout_seconds)
            done = acme.poll_and_finalize(order, deadline=deadline)
        finally:
            for name, token, validation in presented:
                try:
                    challenge.cleanup(name, token, validation)
                except Exception as exc:  # noqa: BLE001 - a failed cleanup must not hide the issuance result
                    log.warning("acme: cleanup of the %s challenge for %s failed: %s", challenge.kind, name, exc)
        chain: str = done.fullchain_pem
        log.info("acme: issued %s (%s)", ", ".join(names), challenge.kind)
        return chain


def _pick(challs: Sequence[Any], kind: str) -> Any:
    for c in challs:
        if getattr(c.chall, "typ", None) == kind:
            return c
    return None


def _describe(exc: Exception) -> str:
    """A one-line reason without secrets: the ACME problem type and detail, or the exception's class."""
    from acme import errors, messages

    if isinstance(exc, messages.Error):
        return f"{exc.typ}: {exc.detail}"
    if isinstance(exc, errors.ValidationError):
        details = []
        for authz in exc.failed_authzrs:
            for c in authz.body.challenges:
                if c.error is not None:
                    details.append(f"{authz.body.identifier.value}: {c.error.typ}: {c.error.detail}")
        return "validation failed: " + "; ".join(details)
    if isinstance(exc, errors.TimeoutError):
        return "the order was not finalized in time"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
