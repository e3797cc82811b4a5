"""JWT verification and minting with PyJWT: HS256 with JWT_SECRET, RS256/ES256 from a JWKS when configured."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from common.config import Config
from common.db import Claims
from common.errors import Unauthorized
from common.jwks import ALGORITHMS, KeySet
from common.roles import ROLES, ROLES_WITH_RESTAURANT, Role
from common.ttl_cache import TtlCache

ALGORITHM = "HS256"


@dataclass(frozen=True)
class Identity:
    """Who is calling, as the token says."""

    user_id: str
    role: str
    restaurant_id: str | None
    expires_at: float

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def read_only(self) -> bool:
        return self.role == Role.DEMO


def _uuid(value: object, claim: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise Unauthorized(f"token claim {claim!r} is not a UUID") from exc


def bearer_token(authorization_header: str) -> str:
    """The token of an `Authorization: Bearer <token>` header (scheme in any case); "" when the
    header carries none, for the caller to answer as it must."""
    scheme, _, token = authorization_header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def verify_token(token: str, secret: str, *, leeway_s: float = 0.0, keys: KeySet | None = None,
                 issuer: str | None = None, audience: str | None = None) -> Identity:
    """Return the token's identity or raise `Unauthorized` saying why, never echoing the token.

    The algorithm picks the key, and each key serves one algorithm: HS256 only with `secret`,
    RS256/ES256 only with the `keys` entry its `kid` names (whose own type must match). So an
    HS256 token "signed" with a published public key, or `alg: none`, never verifies.
    """
    if not token:
        raise Unauthorized("missing bearer token")
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError as exc:
        raise Unauthorized("token is malformed") from exc
    key: Any
    if alg == ALGORITHM:
        key = secret
    elif keys is not None and alg in ALGORITHMS:
        jwk = keys.key(jwt.get_unverified_header(token).get("kid"))
        if jwk.algorithm_name != alg:
            raise Unauthorized(f"token algorithm {alg} does not match its key")
        key = jwk.key
    else:
        raise Unauthorized(f"token algorithm {str(alg)[:10]!r} is not accepted")
    required = ["sub", "role", "exp"] + (["iss"] if issuer else []) + (["aud"] if audience else [])
    try:
        with warnings.catch_warnings():
            # The contract's dev default secret is short; production refuses it at start-up.
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                options={"require": required, "verify_aud": bool(audience)},
                leeway=leeway_s,
                issuer=issuer or None,
                audience=audience or None,
            )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized("token signature is invalid") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"token lacks the {exc.claim!r} claim") from exc
    except jwt.InvalidIssuerError as exc:
        raise Unauthorized("token issuer is not accepted") from exc
    except jwt.InvalidAudienceError as exc:
        raise Unauthorized("token audience is not accepted") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("token is malformed") from exc
    role = claims.get("role")
    if role not in ROLES:
        raise Unauthorized(f"token role {role!r} is unknown")
    restaurant_id = claims.get("restaurant_id")
    if role in ROLES_WITH_RESTAURANT and not restaurant_id:
        raise Unauthorized(f"a {role} token needs a restaurant_id claim")
    return Identity(
        user_id=_uuid(claims["sub"], "sub"),
        role=role,
        restaurant_id=_uuid(restaurant_id, "restaurant_id") if restaurant_id else None,
        expires_at=float(claims["exp"]),
    )


class TokenVerifier:
    """`verify_token` with a memory: a token seen recently is not checked again until it expires.

    HMAC and claim parsing cost about as much as a cached read's whole Redis work; a client sends
    the same token for hours. An entry lives `ttl_s` at most and never past the token's own `exp`
    (read on the wall clock), so an expired token is refused exactly as without the cache.
    Failures are not remembered: a bad token costs the full check every time, as before.
    """

    def __init__(self, secret: str, *, max_entries: int = 10_000, ttl_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 keys: KeySet | None = None, issuer: str | None = None, audience: str | None = None) -> None:
        self.secret = secret
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.wall = wall
        self.cache: TtlCache[str, Identity] = TtlCache(max_entries=max_entries, ttl_s=ttl_s, clock=clock)

    def verify(self, token: str) -> Identity:
        found = self.cache.get(token)
        if found is not None:
            if found.expires_at > self.wall():
                return found
            self.cache.discard(token)
        who = verify_token(token, self.secret, keys=self.keys, issuer=self.issuer, audience=self.audience)
        self.cache.put(token, who, ttl_s=who.expires_at - self.wall())
        return who


def verifier_from_config(config: Config) -> TokenVerifier:
    """The process's verifier: JWT_SECRET, and the JWKS, issuer and audience when configured."""
    keys = KeySet(config.jwt_jwks_url) if config.jwt_jwks_url else None
    return TokenVerifier(config.jwt_secret.value, keys=keys, issuer=config.jwt_issuer or None,
                         audience=config.jwt_audience or None)


def mint_token(
    secret: str,
    *,
    role: str,
    sub: str | None = None,
    restaurant_id: str | None = None,
    ttl_s: float = 24 * 3600,
    now: float | None = None,
) -> str:
    """A signed token for development and tests."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if role in ROLES_WITH_RESTAURANT and not restaurant_id:
        raise ValueError(f"a {role} token needs --restaurant-id")
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "sub": sub or str(uuid.uuid4()),
        "role": role,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    if restaurant_id:
        claims["restaurant_id"] = restaurant_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=ALGORITHM)


def claims_of(who: Identity) -> Claims:
    """The database claims for an identity (row-level security reads them)."""
    return Claims(role=who.role, user_id=who.user_id, restaurant_id=who.restaurant_id)
