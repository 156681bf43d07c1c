"""Verification keys: which algorithms a key may verify, and the static keys of the settings.

One key per algorithm family: HMAC tokens verify with ``SSEDGE_JWT_SECRET`` only, RSA and EC
tokens with a public key only (``SSEDGE_JWT_PUBLIC_KEY``, or a JWKS key: ``relay.jwks``), and
each key only for the accepted algorithms that fit its type (its curve, for EC). A token can
never make a public key serve as an HMAC secret (the key-confusion attack), and ``none`` fits
no key at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt

from relay.settings import Settings, SettingsError

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
KNOWN_ALGORITHMS = (*HMAC_ALGORITHMS, *RSA_ALGORITHMS, *EC_ALGORITHMS.values())


def accepted(settings: Settings) -> list[str]:
    """``SSEDGE_JWT_ALGORITHMS`` as a list; an unknown name is a ``SettingsError``."""
    names = [a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()]
    for alg in names:
        if alg not in KNOWN_ALGORITHMS:
            raise SettingsError(f"bad setting SSEDGE_JWT_ALGORITHMS={settings.jwt_algorithms!r}: "
                                f"unknown algorithm {alg!r} (use {', '.join(KNOWN_ALGORITHMS)})")
    return names


def key_algorithms(key: Any) -> tuple[str, ...]:
    """The algorithms a public key may verify: by its type, and an EC key's curve."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return (EC_ALGORITHMS[key.curve.name],)
    return ()


def load_keys(settings: Settings) -> dict[str, Any]:
    """Algorithm name to the static verifying key; a bad key or algorithm is a
    ``SettingsError``."""
    names = accepted(settings)
    keys: dict[str, Any] = {}
    if settings.jwt_secret:
        secret = settings.jwt_secret.encode()
        for alg in (a for a in names if a in HMAC_ALGORITHMS):
            keys[alg] = _prepared(alg, secret, "SSEDGE_JWT_SECRET", "<hidden>")
    if settings.jwt_public_key:
        public = _public_key(settings.jwt_public_key)
        fits = key_algorithms(public)
        if not fits:
            raise SettingsError("bad setting SSEDGE_JWT_PUBLIC_KEY: an RSA key, or an EC key "
                                "on P-256, P-384 or P-521, is needed")
        usable = [a for a in names if a in fits]
        if not usable:
            raise SettingsError(
                f"bad setting SSEDGE_JWT_PUBLIC_KEY: a key for {', '.join(fits)}, none of "
                f"which is in SSEDGE_JWT_ALGORITHMS={settings.jwt_algorithms!r}")
        for alg in usable:
            keys[alg] = _prepared(alg, public, "SSEDGE_JWT_PUBLIC_KEY",
                                  _shown(settings.jwt_public_key))
    if settings.jwks_url and not any(a not in HMAC_ALGORITHMS for a in names):
        raise SettingsError(f"bad setting SSEDGE_JWKS_URL: its keys verify RS, PS or ES "
                            f"tokens, and SSEDGE_JWT_ALGORITHMS={settings.jwt_algorithms!r} "
                            "accepts none")
    if settings.private_topics and not keys and not settings.jwks_url:
        raise SettingsError("bad setting SSEDGE_PRIVATE_TOPICS: private topics need "
                            "SSEDGE_JWT_SECRET, SSEDGE_JWT_PUBLIC_KEY or SSEDGE_JWKS_URL to "
                            "verify tokens")
    return keys


def _prepared(alg: str, key: Any, name: str, shown: str) -> Any:
    algorithm = jwt.get_algorithm_by_name(alg)
    try:
        prepared = algorithm.prepare_key(key)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        # e.g. a PEM public key given as the HMAC secret: the key-confusion setup
        raise SettingsError(f"bad setting {name}={shown!r}: {exc}") from None
    weak = algorithm.check_key_length(prepared)
    if weak:
        raise SettingsError(f"bad setting {name}={shown!r}: {weak}")
    return prepared


def _public_key(setting: str) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if setting.lstrip().startswith("-----BEGIN"):
        pem = setting.encode()
    else:
        try:
            pem = Path(setting).read_bytes()
        except OSError as exc:
            raise SettingsError(f"bad setting SSEDGE_JWT_PUBLIC_KEY={setting!r}: "
                                f"cannot read it: {exc.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return load_pem_public_key(pem)
    except ValueError:
        raise SettingsError(f"bad setting SSEDGE_JWT_PUBLIC_KEY={_shown(setting)!r}: not a PEM "
                            "public key or certificate") from None


def _shown(setting: str) -> str:
    """The key setting for an error line: a path as given, an inline PEM not at all."""
    return "<inline PEM>" if setting.lstrip().startswith("-----BEGIN") else setting
