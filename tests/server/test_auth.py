"""server/auth.py against the verified Pusher vectors and the official pusher SDK."""

from __future__ import annotations

import hashlib
import hmac
from unittest import mock

import pusher
import pytest
from pusher.http import GET, POST

from server import auth
from server.auth import (
    TIMESTAMP_WINDOW_S,
    SignatureError,
    body_md5,
    channel_auth,
    sign_request,
    string_to_sign,
    verify_channel_auth,
    verify_request,
)

# The verified vectors of protocol.md (Pusher's documentation examples).
KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
CHANNEL_SIG = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
BODY = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
BODY_MD5 = "ec365a775a4cd0599faeb73354201b6f"
TIMESTAMP = 1353088179
REQUEST_SIG = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
PATH = "/apps/3/events"


def vector_params() -> dict[str, str]:
    return {
        "auth_key": KEY,
        "auth_timestamp": str(TIMESTAMP),
        "auth_version": "1.0",
        "body_md5": BODY_MD5,
        "auth_signature": REQUEST_SIG,
    }


def verify(params: dict[str, str], body: bytes = BODY, *, now: float = TIMESTAMP,
           key: str = KEY, secret: str = SECRET, method: str = "POST", path: str = PATH) -> None:
    verify_request(method, path, params, body, key=key, secret=secret, now=now)


# ---------------------------------------------------------------------------- channel auth


def test_channel_auth_vector():
    assert channel_auth(KEY, SECRET, "1234.1234", "private-foobar") == f"{KEY}:{CHANNEL_SIG}"


def test_verify_channel_auth_vector():
    assert verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", f"{KEY}:{CHANNEL_SIG}")


@pytest.mark.parametrize(("socket_id", "channel", "given"), [
    ("1234.1235", "private-foobar", f"{KEY}:{CHANNEL_SIG}"),  # another socket
    ("1234.1234", "private-foobaz", f"{KEY}:{CHANNEL_SIG}"),  # another channel
    ("1234.1234", "private-foobar", f"{'0' * 20}:{CHANNEL_SIG}"),  # another key
    ("1234.1234", "private-foobar", f"{KEY}:{CHANNEL_SIG[:-1]}0"),  # one digit off
    ("1234.1234", "private-foobar", f"{KEY}:{CHANNEL_SIG.upper()}"),  # hex case matters
    ("1234.1234", "private-foobar", CHANNEL_SIG),  # no key prefix
    ("1234.1234", "private-foobar", ""),
    ("1234.1234", "private-foobar", None),
    ("1234.1234", "private-foobar", 12345),
    ("1234.1234", "private-foobar", {"auth": f"{KEY}:{CHANNEL_SIG}"}),
])
def test_verify_channel_auth_refuses(socket_id, channel, given):
    assert not verify_channel_auth(KEY, SECRET, socket_id, channel, given)


def test_channel_auth_refuses_non_ascii_without_raising():
    assert not verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", "ключ:подпись")


def test_presence_signature_covers_channel_data():
    data = '{"user_id":"10","user_info":{"name":"Mr. Channels"}}'
    expected = hmac.new(SECRET.encode(), f"1234.1234:presence-foobar:{data}".encode(),
                        hashlib.sha256).hexdigest()
    signed = channel_auth(KEY, SECRET, "1234.1234", "presence-foobar", data)
    assert signed == f"{KEY}:{expected}"
    assert verify_channel_auth(KEY, SECRET, "1234.1234", "presence-foobar", signed, data)
    assert not verify_channel_auth(KEY, SECRET, "1234.1234", "presence-foobar", signed,
                                   data.replace("10", "11"))


def test_channel_auth_agrees_with_the_official_sdk():
    client = pusher.Pusher(app_id="3", key=KEY, secret=SECRET)
    assert client.authenticate("private-foobar", "1234.1234") == {
        "auth": channel_auth(KEY, SECRET, "1234.1234", "private-foobar")}
    data = {"user_id": "7", "user_info": {"n": 1}}
    sdk = client.authenticate("presence-x", "1.2", data)
    assert sdk["auth"] == channel_auth(KEY, SECRET, "1.2", "presence-x", sdk["channel_data"])


def test_user_auth_signs_socket_user_and_data_and_agrees_with_the_sdk():
    from server.auth import user_auth, verify_user_auth

    user_data = '{"id":"7"}'
    expected = hmac.new(SECRET.encode(), f"1234.1234::user::{user_data}".encode(),
                        hashlib.sha256).hexdigest()
    assert user_auth(KEY, SECRET, "1234.1234", user_data) == f"{KEY}:{expected}"
    sdk = pusher.Pusher(app_id="3", key=KEY, secret=SECRET).authenticate_user(
        "1.2", {"id": "7", "user_info": {"n": 1}})
    assert verify_user_auth(KEY, SECRET, "1.2", sdk["user_data"], sdk["auth"])
    assert not verify_user_auth(KEY, SECRET, "1.3", sdk["user_data"], sdk["auth"])
    assert not verify_user_auth(KEY, SECRET, "1.2", sdk["user_data"] + " ", sdk["auth"])
    assert not verify_user_auth(KEY, SECRET, "1.2", sdk["user_data"], None)


# ---------------------------------------------------------------------------- request signing


def test_body_md5_vector():
    assert body_md5(BODY) == BODY_MD5


def test_sign_request_vector():
    assert sign_request(KEY, SECRET, "POST", PATH, BODY, timestamp=TIMESTAMP) == vector_params()


def test_string_to_sign_sorts_lowercases_and_does_not_escape():
    params = {"B": "2", "a": "x y", "auth_signature": "ignored", "c": "p,q@r"}
    assert string_to_sign("post", "/p", params) == "POST\n/p\na=x y&b=2&c=p,q@r"


def test_verify_request_accepts_the_vector():
    verify(vector_params())  # does not raise


@pytest.mark.parametrize("offset", [-TIMESTAMP_WINDOW_S, TIMESTAMP_WINDOW_S, 0, 1])
def test_timestamp_inside_the_window_is_accepted(offset):
    verify(vector_params(), now=TIMESTAMP + offset)


@pytest.mark.parametrize("offset", [-TIMESTAMP_WINDOW_S - 1, TIMESTAMP_WINDOW_S + 1, 86400])
def test_expired_or_future_timestamp_is_401(offset):
    # now - timestamp = offset: positive means the request is old, negative from the future.
    with pytest.raises(SignatureError) as exc:
        verify(vector_params(), now=TIMESTAMP + offset)
    assert exc.value.status == 401
    assert "auth_timestamp" in exc.value.message


@pytest.mark.parametrize("stamp", ["", "soon", "1353088179.5"])
def test_malformed_timestamp_is_401(stamp):
    params = vector_params() | {"auth_timestamp": stamp}
    with pytest.raises(SignatureError) as exc:
        verify(params)
    assert exc.value.status == 401


def test_missing_timestamp_is_401():
    params = vector_params()
    del params["auth_timestamp"]
    with pytest.raises(SignatureError) as exc:
        verify(params)
    assert exc.value.status == 401


def test_wrong_body_md5_is_401():
    params = vector_params() | {"body_md5": "0" * 32}
    with pytest.raises(SignatureError) as exc:
        verify(params)
    assert exc.value.status == 401
    assert "body_md5" in exc.value.message


def test_missing_body_md5_with_a_body_is_401():
    params = vector_params()
    del params["body_md5"]
    with pytest.raises(SignatureError) as exc:
        verify(params)
    assert exc.value.status == 401


def test_tampered_body_is_401():
    with pytest.raises(SignatureError) as exc:
        verify(vector_params(), BODY.replace(b"project-3", b"project-4"))
    assert exc.value.status == 401


def test_wrong_key_is_401():
    with pytest.raises(SignatureError) as exc:
        verify(vector_params(), key="another-key")
    assert exc.value.status == 401


def test_wrong_secret_is_401():
    with pytest.raises(SignatureError) as exc:
        verify(vector_params(), secret="another-secret")
    assert exc.value.status == 401
    assert "signature" in exc.value.message


@pytest.mark.parametrize(("method", "path"), [("GET", PATH), ("POST", "/apps/4/events")])
def test_signature_is_bound_to_method_and_path(method, path):
    with pytest.raises(SignatureError) as exc:
        verify(vector_params(), method=method, path=path)
    assert exc.value.status == 401


def test_extra_query_parameter_is_covered_by_the_signature():
    with pytest.raises(SignatureError) as exc:
        verify(vector_params() | {"info": "subscription_count"})
    assert exc.value.status == 401


@pytest.mark.parametrize("field", ["auth_signature", "auth_key"])
def test_missing_auth_field_is_401(field):
    params = vector_params()
    del params[field]
    with pytest.raises(SignatureError) as exc:
        verify(params)
    assert exc.value.status == 401


def test_unsupported_auth_version_is_401():
    with pytest.raises(SignatureError) as exc:
        verify(vector_params() | {"auth_version": "2.0"})
    assert exc.value.status == 401


def test_non_ascii_signature_is_refused_not_crashing():
    with pytest.raises(SignatureError) as exc:
        verify(vector_params() | {"auth_signature": "é" * 64})
    assert exc.value.status == 401


def test_sign_then_verify_roundtrip_with_get_params():
    params = sign_request(KEY, SECRET, "GET", "/apps/3/channels", b"",
                          params={"filter_by_prefix": "private-", "info": "subscription_count"},
                          timestamp=TIMESTAMP)
    assert "body_md5" not in params
    verify(params, b"", method="GET", path="/apps/3/channels")


def test_requests_signed_by_the_official_sdk_verify():
    sdk = pusher.Pusher(app_id="3", key=KEY, secret=SECRET)._pusher_client
    post = sdk.trigger.make_request(["project-3"], "foo", {"some": "data"})
    assert post.method == POST
    verify_request("POST", post.path, dict(post.query_params), post.body, key=KEY,
                   secret=SECRET)
    # An SDK GET carries body_md5 of the empty body; it is covered by the signature.
    get = sdk.channels_info.make_request("private-", ["subscription_count"])
    assert get.method == GET
    verify_request("GET", get.path, dict(get.query_params), b"", key=KEY, secret=SECRET)
    with pytest.raises(SignatureError):
        verify_request("GET", get.path, dict(get.query_params), b"", key=KEY, secret="other")


# ---------------------------------------------------------------------------- constant time


def test_signature_comparisons_are_constant_time():
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    with mock.patch.object(auth.hmac, "compare_digest", side_effect=spy):
        assert verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar",
                                   f"{KEY}:{CHANNEL_SIG}")
        assert len(calls) == 1
        verify(vector_params())
        # Both the body hash and the signature go through compare_digest.
        assert len(calls) == 3
        assert (REQUEST_SIG.encode(), REQUEST_SIG.encode()) in calls
        assert (BODY_MD5.encode(), BODY_MD5.encode()) in calls
        with pytest.raises(SignatureError):
            verify(vector_params() | {"auth_signature": "f" * 64})
        assert calls[-1] == (REQUEST_SIG.encode(), b"f" * 64)


def test_no_plain_equality_on_signatures_in_the_source():
    import inspect

    source = inspect.getsource(auth)
    for needle in ("== signature", "signature ==", "== auth", "auth ==", "== expected",
                   "expected =="):
        assert needle not in source, f"non-constant-time comparison: {needle!r}"
