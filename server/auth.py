"""Pusher signatures: channel authorization and HTTP API request signing.

Pure functions, shared by the server (verification), the harness publisher and the tests
(signing). Every comparison of a signature is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = [
    "TIMESTAMP_WINDOW_S",
    "SignatureError",
    "body_md5",
    "channel_auth",
    "sign_request",
    "signatures_match",
    "string_to_sign",
    "user_auth",
    "verify_channel_auth",
    "verify_request",
    "verify_user_auth",
]

TIMESTAMP_WINDOW_S = 600


class SignatureError(Exception):
    """A request failed authentication; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def signatures_match(expected: str, given: object) -> bool:
    """Whether ``given`` is the string ``expected``, compared in constant time."""
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


def _hmac_hex(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def channel_auth(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    """The ``auth`` string a Pusher auth endpoint returns: ``key:hex(hmac)``."""
    message = f"{socket_id}:{channel}" if channel_data is None else (
        f"{socket_id}:{channel}:{channel_data}"
    )
    return f"{key}:{_hmac_hex(secret, message)}"


def verify_channel_auth(
    key: str, secret: str, socket_id: str, channel: str, auth: object,
    channel_data: str | None = None,
) -> bool:
    return signatures_match(channel_auth(key, secret, socket_id, channel, channel_data), auth)


def user_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    """The ``auth`` of a pusher:signin: ``key:hex(hmac(socket_id::user::user_data))``."""
    return f"{key}:{_hmac_hex(secret, f'{socket_id}::user::{user_data}')}"


def verify_user_auth(key: str, secret: str, socket_id: str, user_data: str,
                     auth: object) -> bool:
    return signatures_match(user_auth(key, secret, socket_id, user_data), auth)


def body_md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def string_to_sign(method: str, path: str, params: Mapping[str, str]) -> str:
    query = "&".join(
        f"{k.lower()}={params[k]}" for k in sorted(params, key=str.lower)
        if k.lower() != "auth_signature"
    )
    return f"{method.upper()}\n{path}\n{query}"


def sign_request(
    key: str, secret: str, method: str, path: str, body: bytes = b"",
    params: Mapping[str, str] | None = None, timestamp: int | None = None,
) -> dict[str, str]:
    """The full query parameters (including ``auth_signature``) for an API request."""
    query = dict(params or {})
    query["auth_key"] = key
    query["auth_timestamp"] = str(int(time.time()) if timestamp is None else timestamp)
    query["auth_version"] = "1.0"
    if body:
        query["body_md5"] = body_md5(body)
    query["auth_signature"] = _hmac_hex(secret, string_to_sign(method, path, query))
    return query


def verify_request(
    method: str, path: str, params: Mapping[str, str], body: bytes, *,
    key: str, secret: str, now: float | None = None,
) -> None:
    """Raise SignatureError unless the request is signed by (key, secret) and fresh."""
    signature = params.get("auth_signature")
    if params.get("auth_key") != key:
        raise SignatureError(401, "unknown auth_key")
    if not signature:
        raise SignatureError(401, "missing auth_signature")
    if params.get("auth_version", "1.0") != "1.0":
        raise SignatureError(401, "unsupported auth_version (expected 1.0)")
    raw_timestamp = params.get("auth_timestamp", "")
    # Seconds since the epoch in ASCII digits; anything longer than 20 digits cannot be in the
    # window (and int() of a huge string, or float arithmetic on the result, is a trap).
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit() and len(raw_timestamp) <= 20):
        raise SignatureError(401, "missing or malformed auth_timestamp")
    timestamp = int(raw_timestamp)
    current = int(time.time() if now is None else now)
    if abs(current - timestamp) > TIMESTAMP_WINDOW_S:
        raise SignatureError(
            401, f"auth_timestamp expired: more than {TIMESTAMP_WINDOW_S} s from server time"
        )
    if body:
        if not hmac.compare_digest(params.get("body_md5", "").encode(), body_md5(body).encode()):
            raise SignatureError(401, "body_md5 does not match the body")
    expected = _hmac_hex(secret, string_to_sign(method, path, params))
    if not signatures_match(expected, signature):
        raise SignatureError(401, "invalid auth_signature")
