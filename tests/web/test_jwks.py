"""The JWKS key set (relay/web/jwks.py) and keys chosen by kid (relay/web/auth.py), without a
network: ``Jwks._get`` is replaced by a list of answers, so each fetch and its outcome is exact."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from relay.node.metrics import Metrics
from relay.settings import load
from relay.web import auth, jwks
from relay.web.errors import Unauthorized, Unavailable
from tests.web.test_auth import _b64

SECRET = "s" * 40


@pytest.fixture(scope="module")
def ec_a() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ec_b() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    kind = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    out: dict[str, Any] = json.loads(kind.to_jwk(public))
    if kid is not None:
        out["kid"] = kid
    out.update(extra)
    return out


def document(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def token(key: Any, kid: str | None, alg: str = "ES256", ttl: float = 60,
          subscribe: tuple[str, ...] = ("private-*",)) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode({"ssedge": {"subscribe": list(subscribe)}, "exp": int(time.time() + ttl)},
                      key, algorithm=alg, headers=headers)


# -- parsing a key set ------------------------------------------------------------------------

ACCEPTED = ("RS256", "PS256", "ES256", "ES384")


def test_parse_keys_by_kid_with_the_algorithms_that_fit(ec_a: Any, rsa_key: Any) -> None:
    keys = jwks.parse(document(jwk(ec_a, "a"), jwk(rsa_key, "r"),
                               jwk(rsa_key, "r-ps", alg="PS256")), ACCEPTED)
    assert sorted(keys) == ["a", "r", "r-ps"]
    assert sorted(keys["a"]) == ["ES256"]  # by its curve, not ES384
    assert sorted(keys["r"]) == ["PS256", "RS256"]  # every accepted RSA algorithm
    assert sorted(keys["r-ps"]) == ["PS256"]  # narrowed to its own alg


def test_parse_skips_what_must_never_verify(ec_a: Any, ec_b: Any, rsa_key: Any) -> None:
    private = json.loads(ECAlgorithm.to_jwk(ec_b))  # with "d"
    private["kid"] = "private"
    keys = jwks.parse(document(
        jwk(ec_a, "good"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
        jwk(ec_b, None),  # no kid: cannot be chosen
        jwk(ec_b, "enc", use="enc"),
        private,
        jwk(ec_b, "none", alg="none"),
        jwk(ec_b, "hs", alg="HS256"),
        {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        "not an object",
        jwk(ec_a, "good"),  # a repeated kid: the first one stays
    ), ACCEPTED)
    assert list(keys) == ["good"]


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"keys": {}}', b'{"keys": []}',
                                  document({"kty": "oct", "kid": "x", "k": "eA"})])
def test_a_set_without_usable_keys_is_an_error(body: bytes) -> None:
    with pytest.raises(jwks.JwksError):
        jwks.parse(body, ACCEPTED)


def test_keys_outside_the_accepted_algorithms_are_unusable(rsa_key: Any) -> None:
    with pytest.raises(jwks.JwksError):
        jwks.parse(document(jwk(rsa_key, "r")), ("ES256",))


# -- the key set of a URL: refreshes -------------------------------------------------------------


class Server:
    """What the fake JWKS answers, fetch after fetch: a document, or an exception to raise."""

    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer
        self.fetches = 0

    async def get(self) -> bytes:
        self.fetches += 1
        await asyncio.sleep(0.01)  # concurrent questions meet one fetch under way
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def key_set(server: Server, min_interval_s: float = 10.0) -> jwks.Jwks:
    keys = jwks.Jwks("http://jwks.test/keys", ACCEPTED, refresh_s=300,
                     min_interval_s=min_interval_s)
    keys._get = server.get  # type: ignore[method-assign]
    return keys


def run(work: Callable[[], Any]) -> Any:
    return asyncio.run(work())


def test_unknown_kid_fetches_again_at_most_once_per_interval(ec_a: Any, ec_b: Any) -> None:
    server = Server(document(jwk(ec_a, "a")))
    keys = key_set(server)

    async def go() -> None:
        await keys.refresh()
        assert "a" in keys and server.fetches == 1
        # a made-up kid: fetched again at once (scheduled fetches do not count), and absent
        assert await keys.lookup("made-up") is jwks.Lookup.ABSENT and server.fetches == 2
        # the issuer publishes b: a question about it right away may not fetch (rate limit)
        server.answer = document(jwk(ec_a, "a"), jwk(ec_b, "b"))
        assert await keys.lookup("b") is jwks.Lookup.UNSURE
        assert server.fetches == 2 and keys.retry_after_s() >= 9
        keys._demanded = time.monotonic() - 11  # the interval has passed
        # many questions at once share one fetch
        found = await asyncio.gather(*(keys.lookup("b") for _ in range(20)))
        assert set(found) == {jwks.Lookup.FOUND} and server.fetches == 3
        # a kid the JWKS does not list, asked after the interval: absent, for sure
        keys._demanded = time.monotonic() - 11
        assert await keys.lookup("zzz") is jwks.Lookup.ABSENT
        assert server.fetches == 4
        assert await keys.lookup("a") is jwks.Lookup.FOUND and server.fetches == 4

    run(go)


@pytest.mark.parametrize("failure", [OSError("connection refused"), TimeoutError(),
                                     jwks.JwksError("HTTP 500")])
def test_a_failing_jwks_keeps_the_last_good_keys(ec_a: Any, failure: Exception,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server = Server(document(jwk(ec_a, "a")))
    keys = key_set(server, min_interval_s=0.1)
    metrics = Metrics("test")
    jwks.register(keys, metrics)

    async def go() -> None:
        await keys.refresh()
        for answer in (failure, b'{"keys": []}', b"<html>"):
            server.answer = answer
            await keys.refresh()
            assert list(keys.keys) == ["a"]
        assert keys.failures == 3 and keys.refreshes == 1 and keys.age_s >= 0
        # while it fails, an unknown kid is not refused for good: it may be a new key
        await asyncio.sleep(0.1)
        assert await keys.lookup("b") is jwks.Lookup.UNSURE

    run(go)
    rendered = metrics.render().decode()
    assert 'ssedge_jwks_refresh_failures_total{node="test"' in rendered
    assert "jwks_keys{" in rendered and "jwks_age_seconds{" in rendered
    assert "refresh failed" in caplog.text and "keeping 1 keys" in caplog.text


def test_age_is_negative_until_a_fetch_succeeds() -> None:
    keys = key_set(Server(OSError("down")))
    run(keys.refresh)
    assert keys.age_s == -1 and keys.failures == 1 and not keys.keys


# -- verifying with keys chosen by kid -----------------------------------------------------------


def verifier(server: Server, **values: Any) -> auth.Verifier:
    values = {"jwks_min_interval_s": 0.1, **values}
    settings = load({}, jwks_url="http://jwks.test/keys", jwt_algorithms="HS256,RS256,ES256",
                    jwt_leeway_s=0, **values)
    v = auth.Verifier(settings)
    assert v.jwks is not None
    v.jwks._get = server.get  # type: ignore[method-assign]
    run(v.jwks.refresh)
    return v


def refusal(work: Callable[[], Any]) -> str:
    with pytest.raises(Unauthorized) as info:
        run(work)
    return info.value.message


def test_kid_picks_the_key_and_rotation_needs_no_restart(ec_a: Any, ec_b: Any) -> None:
    server = Server(document(jwk(ec_a, "a")))
    v = verifier(server)
    assert v.verify(token(ec_a, "a")).subscribe.match("private-1")
    # signed with b but claiming a: b's signature does not verify with a's key
    assert refusal(lambda: v.verify_async(token(ec_b, "a"))) == "token signature does not verify"
    # the issuer rotates: b is published, a removed. A token with kid b is unknown to the
    # common path, found after one fetch
    server.answer = document(jwk(ec_b, "b"))
    with pytest.raises(auth.KeyUnknown):
        v.verify(token(ec_b, "b"))
    time.sleep(0.1)
    assert run(lambda: v.verify_async(token(ec_b, "b"))).subscribe.match("private-1")
    assert server.fetches == 2
    # a's tokens stop verifying once a fetch says it is gone
    time.sleep(0.1)
    assert refusal(lambda: v.verify_async(token(ec_a, "a"))) == \
        "token signing key (kid) is unknown"


def test_a_kid_key_verifies_only_the_algorithms_that_fit_it(ec_a: Any, rsa_key: Any) -> None:
    server = Server(document(jwk(ec_a, "a"), jwk(rsa_key, "r")))
    v = verifier(server, jwt_secret=SECRET)
    assert v.verify(token(rsa_key, "r", alg="RS256"))
    # an RSA-signed token naming the EC key's kid
    assert refusal(lambda: v.verify_async(token(rsa_key, "a", alg="RS256"))) == \
        "token algorithm not accepted"
    # an HS token never looks at the JWKS, whatever its kid: the secret verifies it
    assert v.verify(token(SECRET, "a", alg="HS256"))
    # the key-confusion forgery: HS256 with the published JWK as the secret
    head = _b64(json.dumps({"alg": "HS256", "kid": "a"}).encode())
    body = _b64(json.dumps({"ssedge": {"subscribe": ["*"]},
                            "exp": int(time.time()) + 60}).encode())
    signature = hmac.new(json.dumps(jwk(ec_a, "a")).encode(), f"{head}.{body}".encode(),
                         hashlib.sha256).digest()
    forged = f"{head}.{body}.{_b64(signature)}"
    assert refusal(lambda: v.verify_async(forged)) == "token signature does not verify"


def test_unknown_kid_while_unsure_is_temporary_unless_a_static_key_verifies(
        ec_a: Any, ec_b: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    server = Server(document(jwk(ec_a, "a")))
    v = verifier(server, jwks_min_interval_s=60)
    assert v.jwks is not None
    v.jwks._demanded = time.monotonic()  # a fetch for an unknown kid was just made
    # rate-limited: a new kid may be a key published since
    with pytest.raises(Unavailable) as info:
        run(lambda: v.verify_async(token(ec_b, "b")))
    assert info.value.status == 503 and int(info.value.headers["retry-after"]) >= 1
    # with a static key too, a token it signed verifies whatever its kid (migration)
    pem = ec_b.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    both = verifier(Server(document(jwk(ec_a, "a"))), jwks_min_interval_s=60,
                    jwt_public_key=pem.decode())
    assert run(lambda: both.verify_async(token(ec_b, "static-kid")))
    assert run(lambda: both.verify_async(token(ec_b, None)))


def test_no_keys_yet_refuses_for_now_not_for_good(ec_a: Any) -> None:
    server = Server(OSError("down"))
    v = verifier(server)
    assert not v.jwks.keys  # type: ignore[union-attr]
    time.sleep(0.1)
    with pytest.raises(Unavailable):
        run(lambda: v.verify_async(token(ec_a, "a")))
    server.answer = document(jwk(ec_a, "a"))
    time.sleep(0.1)
    assert run(lambda: v.verify_async(token(ec_a, "a")))


def test_publish_and_read_take_the_async_path(ec_a: Any, ec_b: Any) -> None:
    from tests.web.test_auth import request

    server = Server(document(jwk(ec_a, "a")))
    settings = load({}, jwks_url="http://jwks.test/keys", jwks_min_interval_s=0.1,
                    private_topics="private-*")
    authority = auth.Authority(settings)
    assert authority.verifier.jwks is not None
    authority.verifier.jwks._get = server.get  # type: ignore[method-assign]
    run(authority.verifier.jwks.refresh)
    server.answer = document(jwk(ec_b, "b"))
    time.sleep(0.1)
    reader = token(ec_b, "b")
    access = run(lambda: authority.read_access(request(authorization=f"Bearer {reader}"),
                                               "private-1"))
    # the stream ends at exp and the leeway; the page is told about exp itself
    assert access.private and access.token_exp is not None
    assert access.expires == access.token_exp + settings.jwt_leeway_s
    publisher = jwt.encode({"ssedge": {"publish": ["news.*"]}, "exp": int(time.time()) + 60},
                           ec_b, algorithm="ES256", headers={"kid": "b"})
    run(lambda: authority.publish_access(request(authorization=f"Bearer {publisher}"),
                                         "news.1"))


def test_a_static_key_signature_mismatch_is_temporary_only_while_unsure(
        ec_a: Any, ec_b: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = ec_a.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    server = Server(document(jwk(ec_a, "a")))
    v = verifier(server, jwks_min_interval_s=60, jwt_public_key=pem.decode())
    assert v.jwks is not None
    v.jwks._demanded = time.monotonic()
    # signed with b, a kid nobody published yet: neither the static key nor the JWKS can
    # say for sure while a fetch is not allowed
    with pytest.raises(Unavailable):
        run(lambda: v.verify_async(token(ec_b, "b")))
    v.jwks._demanded = time.monotonic() - 61
    assert refusal(lambda: v.verify_async(token(ec_b, "b"))) == "token signature does not verify"
    # an algorithm outside the list is refused without asking the JWKS
    fetches = server.fetches
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert refusal(lambda: v.verify_async(token(p384, "c", alg="ES384"))) == \
        "token algorithm not accepted"
    assert server.fetches == fetches


# -- settings and the token command --------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://issuer.example/keys", "issuer.example/keys",
                                 "http://", "http://a b/keys", "file:///etc/keys.json"])
def test_a_bad_jwks_url_stops_start_up_with_one_line(url: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from relay import cli
    assert cli.main(["relay", "--jwks-url", url, "--private-topics", "private-*"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssedge: bad setting SSEDGE_JWKS_URL=") and "\n" not in err


def test_a_jwks_needs_an_asymmetric_algorithm() -> None:
    from relay.settings import SettingsError

    with pytest.raises(SettingsError, match="SSEDGE_JWKS_URL"):
        auth.Verifier(load({}, jwks_url="https://id.example/jwks", jwt_algorithms="HS256",
                           jwt_secret=SECRET))
    # private topics with only a JWKS: keys come later, start-up goes on
    assert auth.Verifier(load({}, jwks_url="https://id.example/jwks",
                              private_topics="private-*")).enabled


def test_token_command_puts_the_kid_in_the_header(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Any, ec_a: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    from relay import cli
    key_file = tmp_path / "issuer.pem"
    key_file.write_bytes(ec_a.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    assert cli.main(["token", "--subscribe", "private-*", "--key", str(key_file),
                     "--kid", "2026-11"]) == 0
    minted = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(minted)["kid"] == "2026-11"
    v = verifier(Server(document(jwk(ec_a, "2026-11"))))
    assert v.verify(minted).subscribe.match("private-1")
