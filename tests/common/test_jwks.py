"""Identity providers (contract section 6): RS256/ES256 tokens checked against a JWKS served here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.app import create_app
from common.auth import mint_token, verify_token
from common.config import Config
from common.errors import Unauthorized
from common.jwks import KeySet
from tests.fix_infra import JWT_SECRET, Infra
from tests.helpers import WsClient, http_json

ISSUER = "https://id.example/auth/v1"
AUDIENCE = "dms"


class Provider:
    """A JWKS endpoint whose keys the test rotates; it counts the fetches."""

    def __init__(self) -> None:
        self.fetches = 0
        self.private: dict[str, Any] = {}
        self.published: list[str] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server hook name
                provider.fetches += 1
                body = json.dumps({"keys": [provider.jwk(kid) for kid in provider.published]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, kid: str, kind: str) -> None:
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" \
            else ec.generate_private_key(ec.SECP256R1())
        self.published.append(kid)

    def jwk(self, kid: str) -> dict[str, Any]:
        public = self.private[kid].public_key()
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
        found: dict[str, Any] = json.loads(algorithm.to_jwk(public))
        return {**found, "kid": kid, "use": "sig"}

    def token(self, kid: str, *, iss: str = ISSUER, aud: str = AUDIENCE, role: str = "admin",
              alg: str | None = None) -> str:
        key = self.private[kid]
        claims = {"sub": str(uuid.uuid4()), "role": role, "iss": iss, "aud": aud, "exp": int(time.time()) + 600}
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    def public_pem(self, kid: str) -> bytes:
        return bytes(self.private[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    found = Provider()
    found.add("rsa-1", "rsa")
    found.add("ec-1", "ec")
    yield found
    found.close()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], kid: str) -> str:
    """`alg: none`: PyJWT will not make one for us, so it is built by hand."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hs256_with_public_key(provider: Provider, kid: str) -> str:
    """The classic confusion attack: an HS256 token whose HMAC key is the published public key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    claims = _b64(json.dumps({"sub": str(uuid.uuid4()), "role": "admin", "iss": ISSUER, "aud": AUDIENCE,
                              "exp": int(time.time()) + 600}).encode())
    signature = hmac.new(provider.public_pem(kid), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


def hostile_tokens(provider: Provider) -> dict[str, str]:
    provider.add("never-published", "rsa")
    provider.published.remove("never-published")
    claims = {"sub": str(uuid.uuid4()), "role": "admin", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    return {
        "unknown kid": provider.token("never-published"),
        "wrong issuer": provider.token("rsa-1", iss="https://evil.example"),
        "wrong audience": provider.token("ec-1", aud="someone-else"),
        "alg none": unsigned(claims, "rsa-1"),
        "HS256 with the public key": hs256_with_public_key(provider, "rsa-1"),
        "RS384, not an accepted algorithm": provider.token("rsa-1", alg="RS384"),
        "an RS256 header naming an EC key": jwt.encode(claims, provider.private["rsa-1"], algorithm="RS256",
                                                       headers={"kid": "ec-1"}),
    }


def test_keys_are_cached_and_fetched_again_at_most_once_per_30_s(provider: Provider) -> None:
    now = [1000.0]
    keys = KeySet(provider.url, clock=lambda: now[0])

    def check(token: str) -> None:
        verify_token(token, JWT_SECRET, keys=keys, issuer=ISSUER, audience=AUDIENCE)

    check(provider.token("rsa-1"))
    check(provider.token("ec-1"))
    check(provider.token("rsa-1"))
    assert provider.fetches == 1  # cached
    provider.add("rsa-2", "rsa")  # rotation: a new key appears ...
    provider.published.remove("rsa-1")  # ... and the old one is withdrawn
    for _ in range(5):  # a storm of unknown kids inside the 30 s: no fetch at all
        with pytest.raises(Unauthorized, match="key id is unknown"):
            check(provider.token("rsa-2"))
    assert provider.fetches == 1
    now[0] += 30.0
    check(provider.token("rsa-2"))  # the first unknown kid after 30 s fetches once
    assert provider.fetches == 2
    check(provider.token("ec-1"))  # still published
    now[0] += 5.0
    with pytest.raises(Unauthorized):  # the old key went with the rotation
        check(provider.token("rsa-1"))
    with pytest.raises(Unauthorized):
        check(hostile_tokens(provider)["unknown kid"])
    assert provider.fetches == 2


def test_hs256_with_the_secret_stays_the_default(provider: Provider) -> None:
    keys = KeySet(provider.url)
    who = verify_token(mint_token(JWT_SECRET, role="admin"), JWT_SECRET, keys=keys)
    assert who.role == "admin" and provider.fetches == 0
    with pytest.raises(Unauthorized):  # without a JWKS, RS256 is refused outright
        verify_token(provider.token("rsa-1"), JWT_SECRET)


def test_the_api_accepts_the_providers_tokens_and_refuses_the_rest(infra: Infra, provider: Provider) -> None:
    app = create_app(Config.from_env(infra.env(JWT_JWKS_URL=provider.url, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)))
    try:
        client = app.test_client()

        def status(token: str) -> int:
            return int(client.get("/api/restaurants", headers={"Authorization": f"Bearer {token}"}).status_code)

        assert status(provider.token("rsa-1")) == 200
        assert status(provider.token("ec-1")) == 200
        for name, token in hostile_tokens(provider).items():
            response = client.get("/api/restaurants", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, name
            assert response.get_json()["error"]["code"] == "unauthorized"
        assert provider.fetches == 1  # unknown kids inside 30 s fetched nothing more
    finally:
        app.extensions["dms"].close()


def test_the_gateway_handshake_does_the_same(start_gateway: Any, infra: Infra, provider: Provider) -> None:
    _, gw = start_gateway(name="jwks", JWT_JWKS_URL=provider.url, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)
    for token in (provider.token("rsa-1"), provider.token("ec-1")):
        conn = WsClient.connect(gw["url"], token=token)
        assert conn.recv()["type"] == "welcome"
        conn.close()
    for name, token in hostile_tokens(provider).items():
        code, _, body = http_json("GET", f"{gw['http']}/ws?token={token}")
        assert code == 401 and body["error"]["code"] == "unauthorized", name
    assert provider.fetches == 1
