"""Property: the token verifier answers any bearer token with a Principal or Unauthenticated.

Tokens drawn as random text, as correctly signed tokens whose header and claims hold any JSON
value (huge numbers, wrong types, nested objects), and as valid tokens with a character
changed. Anything other than Unauthenticated would reach the client as INTERNAL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.auth.principal import Principal
from server.auth.tokens import TokenVerifier
from server.domain.errors import Unauthenticated
from server.settings import JwtSettings

SECRET = "property-test-secret-long-enough-for-hs256"
SETTINGS = JwtSettings(
    algorithms=("HS256",),
    jwks_url=None,
    public_key_file=None,
    secret=SECRET,
    issuer="chat-service-dev",
    audience="chat-service",
    leeway_seconds=30,
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**400)
    | st.sampled_from([10**400, 2**63, 2**64, 253_402_300_800, 1e300, -1, 0, 1.5])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


def _valid_claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": SETTINGS.issuer,
        "aud": SETTINGS.audience,
        "sub": "someone",
        "tenant_id": "acme",
        "scope": "chat:read",
        "iat": now,
        "exp": now + 600,
    }


def _signed(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An HS256 token over any header and claims (PyJWT refuses to write odd headers)."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(claims)}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@st.composite
def tokens(draw: st.DrawFn) -> str:
    how = draw(st.sampled_from(["text", "claims", "header", "mutated"]))
    if how == "text":
        return draw(st.text(max_size=300))
    claims = _valid_claims()
    headers: dict[str, Any] = {}
    if how == "claims":
        for name in draw(st.lists(st.sampled_from([*sorted(claims), "nbf", "extra"]), max_size=4)):
            claims[name] = draw(JSON)
    if how == "header":
        headers = draw(
            st.dictionaries(st.sampled_from(["kid", "typ", "cty", "crit", "x5u"]), JSON, max_size=3)
        )
    token = _signed({"alg": "HS256", "typ": "JWT", **headers}, claims)
    if how != "mutated":
        return token
    at = draw(st.integers(0, len(token) - 1))
    return token[:at] + draw(st.text(min_size=1, max_size=3)) + token[at + 1 :]


@given(token=tokens())
async def test_any_token_is_a_principal_or_unauthenticated(token: str) -> None:
    verifier = TokenVerifier(settings=SETTINGS)
    try:
        principal = await verifier.verify(token)
    except Unauthenticated:
        return
    assert isinstance(principal, Principal)
    assert principal.tenant_id
    assert principal.subject


@pytest.mark.parametrize("expiry", [10**400, 1e300, 253_402_300_800])
async def test_an_expiry_past_year_9999_is_unauthenticated(expiry: float) -> None:
    claims = _valid_claims() | {"exp": expiry}
    with pytest.raises(Unauthenticated) as refused:
        await TokenVerifier(settings=SETTINGS).verify(_signed({"alg": "HS256"}, claims))
    assert refused.value.reason == "TOKEN_MALFORMED"
