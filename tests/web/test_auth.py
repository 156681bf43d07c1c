"""Tokens and topic patterns (relay/web/auth.py): every way a token can be wrong, with real keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from relay import cli
from relay.settings import Settings, SettingsError, load
from relay.web import auth
from relay.web.errors import Forbidden, Unauthorized
from relay.web.http import Request

SECRET = "s" * 40


def pem(public: Any) -> str:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def claims(subscribe: list[str] | None = None, publish: list[str] | None = None,
           ttl: float = 60, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ssedge": {"subscribe": subscribe or [], "publish": publish or []},
                           "exp": int(time.time() + ttl)}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def hs(payload: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=alg)


def request(path: str = "/", query: str = "", **headers: str) -> Request:
    return Request({
        "method": "GET", "path": path, "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.replace("_", "-").lower().encode(), v.encode())
                    for k, v in headers.items()],
    })


def settings(**values: Any) -> Settings:
    return load({}, **values)


# -- topic patterns -----------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "topic", "matches"), [
    ("private-*", "private-1", True),
    ("private-*", "private-", True),
    ("private-*", "public-1", False),
    ("*", "anything", True),
    ("user.*.inbox", "user.42.inbox", True),
    ("user.*.inbox", "user.42.outbox", False),
    ("a*b*c", "aXbYc", True),
    ("a*b*c", "aXcYb", False),
    ("exact", "exact", True),
    ("exact", "exactly", False),
    ("**", "", True),
])
def test_glob_match(pattern: str, topic: str, matches: bool) -> None:
    assert auth.glob_match(pattern, topic) is matches


topic_text = st.text("ab.*", max_size=12)


@given(pattern=topic_text, topic=st.text("ab.", max_size=12))
def test_glob_match_agrees_with_a_regular_expression(pattern: str, topic: str) -> None:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    assert auth.glob_match(pattern, topic) is bool(re.fullmatch(regex, topic, re.DOTALL))


def test_patterns_from_a_setting() -> None:
    patterns = auth.Patterns.parse(" private-*, secret.room ,")
    assert patterns.match("private-x") and patterns.match("secret.room")
    assert not patterns.match("secret.room2") and not patterns.match("public")
    assert not auth.Patterns.parse("")


def test_a_pathological_pattern_is_fast() -> None:
    t0 = time.perf_counter()
    assert not auth.glob_match("*a" * 60 + "b", "a" * 128)
    assert time.perf_counter() - t0 < 0.1


# -- verifying tokens -------------------------------------------------------------------------


def test_hs256_token(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = auth.Verifier(settings(jwt_secret=SECRET))
    token = verifier.verify(hs(claims(["private-*"], ["news.*"])))
    assert token.subscribe.match("private-1") and not token.subscribe.match("news.1")
    assert token.publish.match("news.1")
    assert token.expires is not None and token.expires > time.time()


def test_rs256_token_from_a_key_file(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    key_file = tmp_path / "public.pem"
    key_file.write_text(pem(rsa_key.public_key()))
    verifier = auth.Verifier(settings(jwt_public_key=str(key_file)))
    assert verifier.algorithms == ["RS256"]
    token = jwt.encode(claims(["t"]), rsa_key, algorithm="RS256")
    assert verifier.verify(token).subscribe.match("t")


def test_es256_token_with_the_pem_inline(ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = auth.Verifier(settings(jwt_public_key=pem(ec_key.public_key())))
    assert verifier.algorithms == ["ES256"]
    token = jwt.encode(claims(["t"]), ec_key, algorithm="ES256")
    assert verifier.verify(token).subscribe.match("t")


def test_es384_key_gets_es384_only_when_accepted() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    verifier = auth.Verifier(settings(jwt_public_key=pem(key.public_key()),
                                      jwt_algorithms="ES384"))
    assert verifier.algorithms == ["ES384"]
    assert verifier.verify(jwt.encode(claims(["t"]), key, algorithm="ES384"))
    with pytest.raises(SettingsError, match="ES384"):
        auth.Verifier(settings(jwt_public_key=pem(key.public_key())))  # default: ES256 only


def reason(verifier: auth.Verifier, token: str) -> str:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    challenge = info.value.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    if token:
        assert token not in challenge and token not in info.value.message
    return info.value.message


def test_expired_token_and_leeway() -> None:
    verifier = auth.Verifier(settings(jwt_secret=SECRET, jwt_leeway_s=5))
    assert reason(verifier, hs(claims(ttl=-10))) == "token expired"
    assert verifier.verify(hs(claims(ttl=-2)))  # inside the leeway


def test_not_yet_valid() -> None:
    verifier = auth.Verifier(settings(jwt_secret=SECRET, jwt_leeway_s=0))
    assert reason(verifier, hs(claims(nbf=int(time.time()) + 60))) == "token not valid yet"


def test_wrong_secret() -> None:
    verifier = auth.Verifier(settings(jwt_secret=SECRET))
    assert reason(verifier, hs(claims(), secret="x" * 40)) == "token signature does not verify"


def test_wrong_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = auth.Verifier(settings(jwt_public_key=pem(rsa_key.public_key())))
    token = jwt.encode(claims(), other, algorithm="RS256")
    assert reason(verifier, token) == "token signature does not verify"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(alg: str, payload: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{head}.{_b64(json.dumps(payload).encode())}.{_b64(signature)}"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(alg: str) -> None:
    verifier = auth.Verifier(settings(jwt_secret=SECRET))
    assert reason(verifier, unsigned(alg, claims(["*"]))) == "token algorithm not accepted"


@pytest.mark.parametrize("with_secret", [False, True])
def test_key_confusion_public_key_as_hmac_secret(rsa_key: rsa.RSAPrivateKey,
                                                 with_secret: bool) -> None:
    # the classic attack: an HS256 token signed with the (public) RSA key's PEM as the secret
    public_pem = pem(rsa_key.public_key())
    forged = unsigned("HS256", claims(["*"]))
    head_payload = forged.rsplit(".", 1)[0]
    signature = hmac.new(public_pem.encode(), head_payload.encode(), hashlib.sha256).digest()
    forged = f"{head_payload}.{_b64(signature)}"
    verifier = auth.Verifier(settings(jwt_public_key=public_pem,
                                      jwt_secret=SECRET if with_secret else ""))
    expected = "token signature does not verify" if with_secret else \
        "token algorithm not accepted"
    assert reason(verifier, forged) == expected


def test_algorithm_outside_the_accepted_list() -> None:
    long_secret = "s" * 64
    verifier = auth.Verifier(settings(jwt_secret=long_secret, jwt_algorithms="HS256"))
    token = hs(claims(), secret=long_secret, alg="HS512")
    assert reason(verifier, token) == "token algorithm not accepted"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "..", "e30.e30.",
                                   "x" * 9000, "\u00e9.\u00e9.\u00e9"])
def test_malformed_tokens(token: str) -> None:
    verifier = auth.Verifier(settings(jwt_secret=SECRET))
    assert reason(verifier, token) in {"malformed token", "token too long",
                                       "token algorithm not accepted", "invalid token"}


def test_expiry_required_unless_told_otherwise() -> None:
    no_exp = hs({"ssedge": {"subscribe": ["t"]}})
    assert reason(auth.Verifier(settings(jwt_secret=SECRET)), no_exp) == \
        "token has no expiry (exp)"
    token = auth.Verifier(settings(jwt_secret=SECRET, jwt_require_exp=False)).verify(no_exp)
    assert token.expires is None and token.subscribe.match("t")


def test_audience_and_issuer() -> None:
    verifier = auth.Verifier(settings(jwt_secret=SECRET, jwt_audience="ssedge",
                                      jwt_issuer="https://id.example"))
    good = claims(["t"], aud="ssedge", iss="https://id.example")
    assert verifier.verify(hs(good))
    assert reason(verifier, hs({**good, "aud": "other"})) == "token is for another audience"
    assert reason(verifier, hs({**good, "iss": "https://evil.example"})) == \
        "token is from another issuer"
    # no audience configured: a token meant for some audience is not for us
    plain = auth.Verifier(settings(jwt_secret=SECRET))
    assert reason(plain, hs(good)) == "token is for another audience"


@pytest.mark.parametrize("claim", [
    "private-*", ["private-*"], {"subscribe": "private-*"}, {"subscribe": [1]},
])
def test_malformed_rights_claim(claim: Any) -> None:
    verifier = auth.Verifier(settings(jwt_secret=SECRET))
    token = hs({"ssedge": claim, "exp": int(time.time()) + 60})
    assert "claim" in reason(verifier, token)


def test_token_without_the_claim_has_no_rights() -> None:
    token = auth.Verifier(settings(jwt_secret=SECRET)).verify(
        hs({"exp": int(time.time()) + 60, "mercure": {"subscribe": ["*"]}}))
    assert not token.subscribe and not token.publish


# -- requests: where tokens come from, 401 and 403 ---------------------------------------------


@pytest.fixture
def authority() -> auth.Authority:
    return auth.Authority(settings(jwt_secret=SECRET, private_topics="private-*",
                                   publish_token="static-token"))


def test_public_topic_needs_no_token_and_ignores_a_bad_one(authority: auth.Authority) -> None:
    assert authority.check_read(request(), "news") is auth.PUBLIC
    assert authority.check_read(request(authorization="Bearer junk"), "news") is auth.PUBLIC


def test_private_topic_without_token_is_401_with_a_bare_challenge(
    authority: auth.Authority,
) -> None:
    with pytest.raises(Unauthorized) as info:
        authority.check_read(request(), "private-1")
    assert info.value.headers["www-authenticate"] == 'Bearer realm="ssedge"'


def test_token_for_another_topic_is_403(authority: auth.Authority) -> None:
    token = hs(claims(["private-2"]))
    with pytest.raises(Forbidden) as info:
        authority.check_read(request(authorization=f"Bearer {token}"), "private-1")
    assert "insufficient_scope" in info.value.headers["www-authenticate"]
    assert info.value.status == 403


@pytest.mark.parametrize("where", ["header", "query", "cookie"])
def test_reader_token_sources(authority: auth.Authority, where: str) -> None:
    token = hs(claims(["private-*"]))
    req = {
        "header": request(authorization=f"bearer  {token} "),
        "query": request(query=f"since=now&access_token={token}"),
        "cookie": request(cookie=f'theme=dark; ssedge_auth="{token}"; x=1'),
    }[where]
    access = authority.check_read(req, "private-1")
    assert access.private and access.expires is not None


def test_header_wins_over_query_and_cookie(authority: auth.Authority) -> None:
    good, other = hs(claims(["private-1"])), hs(claims(["private-2"]))
    req = request(query=f"access_token={other}", authorization=f"Bearer {good}",
                  cookie=f"ssedge_auth={other}")
    assert authority.check_read(req, "private-1").private


def test_other_authorization_schemes_are_401(authority: auth.Authority) -> None:
    with pytest.raises(Unauthorized):
        authority.check_read(request(authorization="Basic dTpw"), "private-1")
    with pytest.raises(Unauthorized):
        authority.check_read(request(authorization="Bearer"), "private-1")


def test_publish_with_static_token_or_jwt_rights(authority: auth.Authority) -> None:
    authority.check_publish(request(authorization="Bearer static-token"), "anything")
    token = hs(claims(publish=["news.*"]))
    authority.check_publish(request(authorization=f"Bearer {token}"), "news.sport")
    with pytest.raises(Forbidden):
        authority.check_publish(request(authorization=f"Bearer {token}"), "private-1")
    reader = hs(claims(subscribe=["*"]))
    with pytest.raises(Forbidden):
        authority.check_publish(request(authorization=f"Bearer {reader}"), "news.sport")
    for bad in ("Bearer static-token2", "Bearer " + hs(claims(publish=["*"], ttl=-60)),
                "Basic static-token"):
        with pytest.raises(Unauthorized):
            authority.check_publish(request(authorization=bad), "news.sport")


def test_publish_never_takes_a_token_from_cookie_or_query(authority: auth.Authority) -> None:
    token = hs(claims(publish=["*"]))
    for req in (request(cookie=f"ssedge_auth={token}"), request(query=f"access_token={token}")):
        with pytest.raises(Unauthorized):
            authority.check_publish(req, "news")


def test_static_token_only_without_jwt_keys() -> None:
    only_static = auth.Authority(settings(publish_token="static-token"))
    only_static.check_publish(request(authorization="Bearer static-token"), "t")
    with pytest.raises(Unauthorized):
        only_static.check_publish(request(authorization=f"Bearer {hs(claims())}"), "t")
    nothing = auth.Authority(settings())
    with pytest.raises(Unauthorized):
        nothing.check_publish(request(authorization="Bearer "), "t")


# -- settings that stop start-up --------------------------------------------------------------


def one_line_error(**values: Any) -> str:
    with pytest.raises(SettingsError) as info:
        auth.Authority(settings(**values))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_key_settings_are_one_line_errors(rsa_key: rsa.RSAPrivateKey,
                                              tmp_path: Path) -> None:
    assert "SSEDGE_JWT_ALGORITHMS" in one_line_error(jwt_secret=SECRET,
                                                    jwt_algorithms="HS256,none")
    missing = one_line_error(jwt_public_key=str(tmp_path / "nope.pem"))
    assert "SSEDGE_JWT_PUBLIC_KEY" in missing and "nope.pem" in missing
    (tmp_path / "junk.pem").write_text("not a key")
    assert "not a PEM" in one_line_error(jwt_public_key=str(tmp_path / "junk.pem"))
    private_pem = rsa_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    # a private key has no place on a relay: refused, and never printed
    message = one_line_error(jwt_public_key=private_pem)
    assert "PRIVATE" not in message and "<inline PEM>" in message
    short = one_line_error(jwt_secret="short")
    assert "SSEDGE_JWT_SECRET" in short and "short" not in short.split(":", 1)[1]
    # the public key pasted as the HMAC secret: the key-confusion setup
    assert "SSEDGE_JWT_SECRET" in one_line_error(jwt_secret=pem(rsa_key.public_key()))
    assert "SSEDGE_JWT_ALGORITHMS" in one_line_error(jwt_public_key=pem(rsa_key.public_key()),
                                                    jwt_algorithms="ES256")
    assert "SSEDGE_PRIVATE_TOPICS" in one_line_error(private_topics="private-*")


@pytest.mark.parametrize(("env", "named"), [
    ({"SSEDGE_PRIVATE_TOPICS": "bad topic"}, "SSEDGE_PRIVATE_TOPICS"),
    ({"SSEDGE_CORS_ORIGIN": "example.com"}, "SSEDGE_CORS_ORIGIN"),
    ({"SSEDGE_CORS_ORIGIN": "*, https://a.example"}, "SSEDGE_CORS_ORIGIN"),
    ({"SSEDGE_JWT_LEEWAY_S": "-1"}, "SSEDGE_JWT_LEEWAY_S"),
])
def test_bad_auth_settings_are_refused_at_load(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load(env)


def test_relay_command_stops_with_exit_2_on_a_bad_key(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    code = cli.main(["relay", "--jwt-public-key", str(tmp_path / "missing.pem")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssedge: bad setting SSEDGE_JWT_PUBLIC_KEY=") and "\n" not in err


# -- ssedge token ----------------------------------------------------------------------------


def test_token_command_mints_what_the_verifier_accepts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path,
) -> None:
    monkeypatch.setenv("SSEDGE_JWT_SECRET", SECRET)
    assert cli.main(["token", "--subscribe", "private-*", "--publish", "news.*",
                     "--ttl", "60"]) == 0
    token = auth.Verifier(settings(jwt_secret=SECRET)).verify(capsys.readouterr().out.strip())
    assert token.subscribe.match("private-9") and token.publish.match("news.x")
    key_file = tmp_path / "ec.pem"
    key_file.write_bytes(ec_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    assert cli.main(["token", "--subscribe", "a", "--key", str(key_file)]) == 0
    verifier = auth.Verifier(settings(jwt_public_key=pem(ec_key.public_key())))
    assert verifier.verify(capsys.readouterr().out.strip()).subscribe.match("a")
