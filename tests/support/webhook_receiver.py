"""Real HTTP endpoints on a thread, as an app's backend would run them: ``HttpEndpoint`` (any
JSON answer: auth endpoints) and ``WebhookReceiver``, which records every POST (time, headers,
body) and can be told to fail the next N requests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def events(self) -> list[dict[str, Any]]:
        return json.loads(self.body)["events"]


class HttpEndpoint:
    """An app backend's HTTP endpoint on a thread (what a node or a client calls): every POST
    goes to ``answer(headers, body)``, which returns the status and a JSON body (or None).
    A context manager; ``close()`` stops it."""

    def __init__(self, path: str,
                 answer: Callable[[dict[str, str], bytes], tuple[int, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status, reply = answer({k.lower(): v for k, v in self.headers.items()}, body)
                raw = b"" if reply is None else json.dumps(reply).encode()
                self.send_response(status)
                if reply is not None:
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class WebhookReceiver(HttpEndpoint):
    """Records every POST (time, headers, body) and can be told to fail the next N."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        super().__init__("/pusher/webhooks", self._receive)

    def _receive(self, headers: dict[str, str], body: bytes) -> tuple[int, None]:
        with self.lock:
            status = 500 if self.fail_next > 0 else 200
            self.fail_next = max(0, self.fail_next - 1)
            self.deliveries.append(Delivery(time.monotonic(), headers, body, status))
        return status, None

    def accepted(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.status == 200]

    def events(self) -> list[dict[str, Any]]:
        return [event for delivery in self.accepted() for event in delivery.events]
