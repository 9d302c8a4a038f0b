"""Generated and mutated input for a turnout node: HTTP requests, websocket handshakes, frames
and Pusher messages, from one seeded ``random.Random`` so a run can be repeated exactly.

Every generator mixes three sources: the well-formed thing (a signed publish, a subscribe, a
masked text frame), the edges a parser gets wrong (missing, duplicated, huge, negative,
non-ASCII, control characters, lying lengths) and blind mutation of the serialized bytes (flips,
insertions, deletions, truncation, splices). The vocabularies are module constants so the
hypothesis strategies in tests/server/test_fuzz.py draw from the same ones.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
from collections.abc import Callable
from typing import Any

from harness.ws_wire import client_frame
from server.auth import channel_auth, sign_request

__all__ = ["EVIL_STRINGS", "HEADER_NAMES", "METHODS", "TARGETS", "Generator"]

METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
           "get", "G\x00T", "POST ", "X" * 300, "PRI"]
TARGETS = [
    "/", "/health", "/metrics", "/apps/{id}/events", "/apps/{id}/batch_events",
    "/apps/{id}/channels", "/apps/{id}/channels/results-1", "/apps/{id}/channels/%ff%fe",
    "/app/{key}?protocol=7", "/app/{key}", "/app/{key}?protocol=6", "/app/nope?protocol=7",
    "//[", "//", "/..", "/%", "/%zz", "*", "http://host/health", "http://[::1/health",
    "https://h:99999/x", "/chaos/leak?mb_per_s=1000", "/chaos/status", "/apps//events",
    "/apps/{id}/events/../../health", "/" + "a" * 5000, "/\u00e9\u2603", "/apps/\x7f/events",
    "health", "", " ", "/health#frag", "/?" + "&".join(f"k{i}=v" for i in range(300)),
]
HEADER_NAMES = [
    "Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade",
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol", "Origin", "Expect", "Content-Type", "X-Chaos-Token",
    "Cookie", "X-Forwarded-For", "Trailer", "TE", "Keep-Alive", "X" * 200, "Bad Header",
    "Ünïcode", "",
]
EVIL_STRINGS = [
    "", " ", "0", "-1", "1e309", "9" * 400, "NaN", "null", "\x00", "\r\n", "\r\nX-Injected: 1",
    "\u00e9", "\ud7ff", "\uffff", "\U0001f600", "%00", "%ff", "../../", "A" * 10_000,
    "chunked", "gzip, chunked", "chunked, gzip", "websocket", "Upgrade", "close", "13", "8",
    "dGhlIHNhbXBsZSBub25jZQ==", "====", "\t", "1.5", "0x10", "+5", " 5", "5 ",
    "18446744073709551616",
]
JSON_EDGES: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**63), 2**64 + 1, 1.5, 1e308, "", "x" * 11_000,
    "\u0000", "\U0001f600", [], {}, [[[[[]]]]], {"a": {"b": {"c": []}}}, "[" * 10,
]
EVENTS = ["pusher:subscribe", "pusher:unsubscribe", "pusher:ping", "pusher:pong",
          "pusher:signin", "pusher:bogus", "client-x", "client-", "pusher_internal:x", "",
          "e" * 300]
CHANNELS = ["results-1", "results-2", "private-x", "presence-x", "#server-to-user-1",
            "x" * 164, "x" * 165, "with space", "", "é", "private-", "a;b,c.d=e@f_g-h"]


class Generator:
    """One seeded source of hostile input for the node serving app (app_id, key, secret)."""

    def __init__(self, rng: random.Random, app: tuple[str, str, str],
                 avoid_channels: frozenset[str] = frozenset()) -> None:
        self.rng = rng
        self.app_id, self.key, self.secret = app
        self.avoid = avoid_channels  # never publish to or name these (the bystanders')

    # ------------------------------------------------------------------ small pieces
    def pick(self, items: list[Any]) -> Any:
        return items[self.rng.randrange(len(items))]

    def text(self, limit: int = 40) -> str:
        alphabet = self.pick([
            "abcdefghijklmnopqrstuvwxyz0123456789-_",
            "".join(chr(c) for c in range(32, 127)),
            "\x00\x01\r\n\t \x7f\u00e9\u2603\U0001f600\ud7ff",
        ])
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randrange(limit + 1)))

    def evil(self) -> str:
        return self.pick(EVIL_STRINGS) if self.rng.random() < 0.7 else self.text()

    def channel(self) -> str:
        while True:
            name = self.pick(CHANNELS) if self.rng.random() < 0.6 else (
                "fz-" + self.text(20))
            if name not in self.avoid:
                return name

    def json_value(self, depth: int = 0) -> Any:
        roll = self.rng.random()
        if depth > 3 or roll < 0.4:
            return self.pick(JSON_EDGES) if self.rng.random() < 0.5 else self.text(30)
        if roll < 0.7:
            return [self.json_value(depth + 1) for _ in range(self.rng.randrange(4))]
        return {self.text(8): self.json_value(depth + 1) for _ in range(self.rng.randrange(4))}

    def mutate(self, data: bytes) -> bytes:
        """Blind byte-level mutation: 1-4 of flip, insert, delete, truncate, splice, repeat."""
        buf = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            op = self.rng.randrange(6)
            at = self.rng.randrange(len(buf) + 1)
            if op == 0 and buf:
                buf[min(at, len(buf) - 1)] ^= 1 << self.rng.randrange(8)
            elif op == 1:
                buf[at:at] = os.urandom(self.rng.randint(1, 8)) if self.rng.random() < 0.5 \
                    else self.pick([b"\r\n", b"\x00", b":", b" ", b"\r\n\r\n", b"\xff"])
            elif op == 2 and buf:
                del buf[at:at + self.rng.randint(1, 16)]
            elif op == 3:
                del buf[at:]
            elif op == 4 and buf:
                start = self.rng.randrange(len(buf))
                buf[at:at] = buf[start:start + self.rng.randint(1, 64)]
            elif op == 5 and buf:
                start = self.rng.randrange(len(buf))
                buf[at:at] = buf[start:start + 8] * self.rng.randint(2, 64)
        return bytes(buf)

    # ------------------------------------------------------------------ HTTP
    def event_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.rng.random() < 0.9:
            body["name"] = self.rng.choice(["update", "", 7, None, "e" * 250, self.text()])
        if self.rng.random() < 0.9:
            body["data"] = self.rng.choice([json.dumps({"v": self.text()}), self.json_value()])
        roll = self.rng.random()
        if roll < 0.5:
            body["channels"] = [self.channel() for _ in range(self.rng.choice([0, 1, 2, 101]))]
        elif roll < 0.8:
            body["channel"] = self.channel() if self.rng.random() < 0.8 else self.json_value()
        if self.rng.random() < 0.2:
            body["socket_id"] = self.rng.choice(["1.1", "x", "\u0661.\u0661", 5, "9" * 30 + ".1"])
        if self.rng.random() < 0.1:
            body["info"] = self.json_value()
        return body

    def signed_api_request(self) -> tuple[str, str, bytes]:
        """(method, target, body) of an API request, correctly signed most of the time."""
        route = self.rng.choice(["events", "batch_events", "channels", "channels/results-1"])
        path = f"/apps/{self.app_id}/{route}"
        if route == "batch_events":
            payload: Any = {"batch": [dict(self.event_body(), channel=self.channel())
                                      for _ in range(self.rng.choice([0, 1, 3, 11]))]}
        else:
            payload = self.event_body()
        if self.rng.random() < 0.15:
            payload = self.json_value()
        body = json.dumps(payload).encode() if route.endswith("events") else b""
        if self.rng.random() < 0.1:
            body = self.mutate(body)
        method = "POST" if route.endswith("events") else "GET"
        params: dict[str, str] = {}
        if route.startswith("channels"):
            params = {"info": self.rng.choice(["subscription_count", "user_count", "", "x"]),
                      "filter_by_prefix": self.rng.choice(["", "presence-", "results-"])}
        query = sign_request(self.key, self.secret, method, path, body, params=params)
        if self.rng.random() < 0.2:
            query[self.pick(list(query))] = self.evil()  # break one parameter
        target = path + "?" + "&".join(f"{k}={v}" for k, v in query.items())
        return method, target, body

    def http_request(self, port: int) -> bytes:
        """A request: 40% well-framed (only its content is hostile, so it reaches the routes
        and the API's validation), the rest hostile in framing and headers too."""
        if self.rng.random() < 0.4:
            method, target, body = self.signed_api_request() if self.rng.random() < 0.7 else (
                "GET", self.pick(TARGETS[:12]).format(id=self.app_id, key=self.key), b"")
            return (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "\r\n").encode("utf-8", "surrogateescape") + body
        roll = self.rng.random()
        if roll < 0.3:
            method, target, body = self.signed_api_request()
        else:
            method = self.pick(METHODS) if self.rng.random() < 0.3 else self.rng.choice(
                ["GET", "POST"])
            target = self.pick(TARGETS).format(id=self.app_id, key=self.key)
            if self.rng.random() < 0.2:
                target += "?auth_timestamp=" + self.evil() + "&auth_key=" + self.key
            body = json.dumps(self.json_value()).encode() if self.rng.random() < 0.4 else b""
        version = self.rng.choice(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", ""])
        headers: list[tuple[str, str]] = []
        if self.rng.random() < 0.95:
            headers.append(("Host", f"127.0.0.1:{port}"))
        framing = self.rng.random()
        if body and framing < 0.6:
            headers.append(("Content-Length", str(len(body))))
        elif body and framing < 0.75:
            headers.append(("Transfer-Encoding", "chunked"))
            body = self._chunked(body)
        elif framing < 0.9:
            headers.append((self.rng.choice(["Content-Length", "Transfer-Encoding"]),
                            self.evil()))
        for _ in range(self.rng.choice([0, 0, 1, 2, 5, 40])):
            headers.append((self.pick(HEADER_NAMES), self.evil()))
        if self.rng.random() < 0.1:
            headers.append(("Connection", "close"))
        head = f"{method} {target} {version}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        data = head.encode("utf-8", "surrogateescape") + body
        if self.rng.random() < 0.25:
            data = self.mutate(data)
        return data

    def _chunked(self, body: bytes) -> bytes:
        out = b""
        while body:
            n = self.rng.randint(1, 64)
            out += b"%x\r\n%s\r\n" % (len(body[:n]), body[:n])
            body = body[n:]
        tail = self.rng.choice([b"0\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n", b"zz\r\n", b""])
        return out + tail

    # ------------------------------------------------------------------ websockets
    def handshake(self, port: int) -> bytes:
        """A websocket upgrade: valid most of the time, so frames get through to the parser."""
        key = base64.b64encode(os.urandom(16)).decode()
        target = f"/app/{self.key}?protocol=7"
        lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if self.rng.random() < 0.15:
            index = self.rng.randrange(1, len(lines))
            name = lines[index].split(":", 1)[0]
            lines[index] = f"{name}: {self.evil()}"
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        if self.rng.random() < 0.05:
            data = self.mutate(data)
        return data

    def pusher_message(self, socket_id: str) -> bytes:
        event = self.pick(EVENTS) if self.rng.random() < 0.85 else self.text(30)
        data: Any
        if event == "pusher:subscribe" or self.rng.random() < 0.2:
            channel = self.channel()
            data = {"channel": channel}
            if channel.startswith(("private-", "presence-")) and self.rng.random() < 0.5:
                data["auth"] = channel_auth(self.key, self.secret, socket_id, channel)
            elif self.rng.random() < 0.3:
                data["auth"] = self.evil()
            if self.rng.random() < 0.3:
                data["offset"] = self.rng.choice([0, 1, -1, 2**70, 1.5, "3", None])
                data["epoch"] = self.rng.choice(["", "e", "x" * 100, 5, None])
        else:
            data = self.json_value()
        message: dict[str, Any] = {"event": event, "data": data}
        if self.rng.random() < 0.3:
            message["data"] = json.dumps(data)  # Pusher's double encoding
        if self.rng.random() < 0.1:
            message["channel"] = self.channel()
        if self.rng.random() < 0.05:
            return json.dumps(self.json_value()).encode()
        raw = json.dumps(message).encode()
        return self.mutate(raw) if self.rng.random() < 0.1 else raw

    def frames(self, socket_id: str) -> list[bytes]:
        """A burst of client frames after a handshake (each item one write)."""
        out: list[bytes] = []
        for _ in range(self.rng.randint(1, 30)):
            kind: Callable[[], bytes] = self.pick([
                lambda: client_frame(0x1, self.pusher_message(socket_id)),
                lambda: client_frame(0x1, self.pusher_message(socket_id)),
                lambda: client_frame(0x1, self.pusher_message(socket_id)),
                self._fragmented,
                lambda: client_frame(self.pick([0x9, 0xA]), os.urandom(self.rng.randint(0, 125))),
                self._close,
                lambda: client_frame(0x2, os.urandom(self.rng.randint(0, 300))),
                lambda: client_frame(self.rng.randrange(16), os.urandom(self.rng.randint(0, 200)),
                                   fin=self.rng.random() < 0.5, rsv=self.rng.randrange(8),
                                   mask=self.rng.random() < 0.8),
                lambda: client_frame(0x1, b"", length=self.pick([126, 65535, 2**31, 2**63 - 1])),
                lambda: client_frame(0x1, "\ud800".encode("utf-8", "surrogatepass")),
                lambda: client_frame(0x0, b"x", fin=self.rng.random() < 0.5),
                self._empty_continuations,
                lambda: self.mutate(client_frame(0x1, self.pusher_message(socket_id))),
                lambda: os.urandom(self.rng.randint(1, 64)),
            ])
            out.append(kind())
        return out

    def _fragmented(self) -> bytes:
        payload = json.dumps({"event": "pusher:ping", "data": {"pad": self.text(200)}}).encode()
        cuts = sorted(self.rng.sample(range(len(payload) + 1), self.rng.randint(1, 5)))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        out = b""
        for i, part in enumerate(parts):
            if self.rng.random() < 0.2:
                out += client_frame(0x9, b"interleaved")
            out += client_frame(0x1 if i == 0 else 0x0, part, fin=i == len(parts) - 1)
        return out

    def _empty_continuations(self) -> bytes:
        return client_frame(0x1, b"{", fin=False) + client_frame(0x0, b"", fin=False) * \
            self.rng.choice([5, 99, 150, 2000])

    def _close(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.3:
            payload = struct.pack("!H", self.rng.choice(
                [0, 999, 1000, 1001, 1004, 1005, 1006, 1011, 1015, 2999, 3000, 4999, 5000,
                 65535]))
        elif roll < 0.5:
            payload = os.urandom(self.rng.randint(0, 3))
        elif roll < 0.7:
            payload = struct.pack("!H", 1000) + os.urandom(self.rng.randint(1, 123))
        else:
            payload = struct.pack("!H", 1000) + self.text(50).encode("utf-8", "surrogatepass")[
                :123]
        return client_frame(0x8, payload)
