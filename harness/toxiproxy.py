"""Toxiproxy: the server process and the only client of its HTTP API in the harness.

Why this module does not call toxiproxy-python
-----------------------------------------------
toxiproxy-python (0.1.1, import ``toxiproxy``) was the user's choice, and its JSON matches the
2.x API.  We checked whether it can drive *several* Toxiproxy servers from one process, which a
run always needs (one "backend" server for node→Redis links plus one server per client lane):

* It cannot.  Every call goes through ``toxiproxy.api.APIConsumer``, whose ``host``/``port`` are
  *class attributes*; ``Toxiproxy.update_api_consumer()`` rewrites them for the whole process, and
  ``Proxy`` objects do not remember which server they came from.  After pointing it at server B,
  a ``Proxy`` obtained from server A silently adds its toxics to B's proxy of the same name (or
  404s).  ``tests/harness/test_topology.py::test_toxiproxy_python_is_process_global`` pins that
  down; if a future release fixes it, that test fails and this choice should be revisited.
* Serialising all calls behind a process-wide lock that swaps host/port would work only while
  no call hangs: the library sets no timeouts, and a worker thread abandoned by a trio deadline
  would keep holding the lock, blocking fault injection on *every* server for the rest of the run.

So this module talks to the API with a small async ``httpx`` client instead (per-server base
URL, a timeout on every request, a trio deadline on every operation, natively cancellable, no
worker threads, and 5xx raised rather than ignored).  It keeps what the library did not do
either: every mutation is verified by reading the proxy back (toxic present with the right
type/stream/attributes, toxic absent, ``enabled`` flag), and toxic attributes are checked
against the toxic type before sending, because Toxiproxy silently ignores unknown attribute
names (``{"latency_ms": 500}`` would give a 0 ms latency toxic).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, final, get_args

import httpx
import trio

from harness.ports import LOOPBACK, PortAllocator, default_allocator
from harness.procs import (
    ManagedProcess,
    ProcessSpec,
    Supervisor,
    find_binary,
    http_ready,
)

__all__ = [
    "TOXIC_ATTRIBUTES",
    "Proxy",
    "ProxyState",
    "Stream",
    "Toxic",
    "ToxicType",
    "ToxiproxyAPIError",
    "ToxiproxyError",
    "ToxiproxyServer",
    "ToxiproxyStateError",
    "start_toxiproxy",
]

ToxicType = Literal[
    "latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"
]
Stream = Literal["upstream", "downstream"]

#: Attribute names each toxic understands (``toxics/*.go`` JSON tags).  Units: latency/jitter,
#: slow_close delay, timeout in ms; bandwidth rate in KB/s; slicer sizes in bytes and its delay
#: in µs; limit_data in bytes.
TOXIC_ATTRIBUTES: Final[Mapping[str, frozenset[str]]] = {
    "latency": frozenset({"latency", "jitter"}),
    "bandwidth": frozenset({"rate"}),
    "slow_close": frozenset({"delay"}),
    "timeout": frozenset({"timeout"}),
    "reset_peer": frozenset({"timeout"}),
    "slicer": frozenset({"average_size", "size_variation", "delay"}),
    "limit_data": frozenset({"bytes"}),
}
assert set(TOXIC_ATTRIBUTES) == set(get_args(ToxicType))


class ToxiproxyError(RuntimeError):
    """A Toxiproxy operation failed or did not finish before its deadline."""


class ToxiproxyAPIError(ToxiproxyError):
    """The API answered with a non-2xx status (400 bad toxic, 404 unknown, 409 exists, 5xx)."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {message}")
        self.status = status
        self.message = message


class ToxiproxyStateError(ToxiproxyError):
    """The API accepted a change but reading the proxy back shows it did not take effect."""


@dataclass(frozen=True)
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Toxic:
        return cls(
            name=data["name"],
            type=data["type"],
            stream=data.get("stream", "downstream"),
            toxicity=float(data.get("toxicity", 1.0)),
            attributes=dict(data.get("attributes") or {}),
        )


@dataclass(frozen=True)
class ProxyState:
    """A proxy as the server sees it right now."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[Toxic, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProxyState:
        return cls(
            name=data["name"],
            listen=data["listen"],
            upstream=data["upstream"],
            enabled=bool(data["enabled"]),
            toxics=tuple(Toxic.from_json(t) for t in data.get("toxics") or ()),
        )


@final
@dataclass(frozen=True, eq=False)
class Proxy:
    """A handle on one proxy of one server; fault code can act on it directly."""

    name: str
    listen_host: str
    listen_port: int
    upstream: str
    server: ToxiproxyServer = field(repr=False)

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    async def add_toxic(
        self,
        type: ToxicType,
        *,
        stream: Stream = "downstream",
        attributes: Mapping[str, int | float] | None = None,
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> Toxic:
        return await self.server.add_toxic(
            self, type, stream=stream, attributes=attributes, toxicity=toxicity, name=name
        )

    async def remove_toxic(self, name: str, *, missing_ok: bool = False) -> None:
        await self.server.remove_toxic(self, name, missing_ok=missing_ok)

    async def list_toxics(self) -> list[Toxic]:
        return await self.server.list_toxics(self)

    async def disable(self) -> None:
        await self.server.disable(self)

    async def enable(self) -> None:
        await self.server.enable(self)

    async def state(self) -> ProxyState:
        return await self.server.get_proxy(self.name)


def _check_toxic(type: str, stream: str, attributes: Mapping[str, Any], toxicity: float) -> None:
    allowed = TOXIC_ATTRIBUTES.get(type)
    if allowed is None:
        raise ValueError(f"unknown toxic type {type!r}; known: {sorted(TOXIC_ATTRIBUTES)}")
    unknown = set(attributes) - allowed
    if unknown:
        raise ValueError(
            f"{type} toxic has no attribute(s) {sorted(unknown)}; it has {sorted(allowed)}"
        )
    if stream not in get_args(Stream):
        raise ValueError(f"stream must be 'upstream' or 'downstream', not {stream!r}")
    if not 0.0 <= toxicity <= 1.0:
        raise ValueError(f"toxicity must be within [0, 1], not {toxicity}")


@final
class ToxiproxyServer:
    """Client of one Toxiproxy server (and, when started by us, its process).

    Every method is one API operation under a trio deadline of ``timeout`` seconds, and raises
    :class:`ToxiproxyError` (or a subclass) when it fails, times out or does not take effect.
    Call :meth:`aclose` when done.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        process: ManagedProcess | None = None,
        ports: PortAllocator | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.process = process
        self.timeout = 5.0  # seconds, for each API operation
        self._ports = ports or default_allocator()
        self._owned_ports: list[int] = []
        # trust_env=False: never route loopback API calls through an environment proxy.
        # A non-browser User-Agent is required: Toxiproxy answers 403 to "Mozilla/...".
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=self.timeout,
            trust_env=False,
            headers={"User-Agent": "turnout-harness"},
        )

    def __repr__(self) -> str:
        return f"<ToxiproxyServer {self.url}>"

    async def aclose(self) -> None:
        # Ports first: they are synchronous and must be released even if we are cancelled.
        for port in self._owned_ports:
            self._ports.release(port)
        self._owned_ports.clear()
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self._http.aclose()

    # -- transport
    async def _request(self, method: str, path: str, json: Any = None) -> Any:
        try:
            with trio.fail_after(self.timeout):
                response = await self._http.request(method, path, json=json)
        except trio.TooSlowError as exc:
            raise ToxiproxyError(
                f"{method} {self.url}{path}: no answer within {self.timeout:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise ToxiproxyError(f"{method} {self.url}{path}: {exc!r}") from exc
        if response.status_code >= 300:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ToxiproxyAPIError(method, path, response.status_code, message)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    # -- server
    async def get_proxy(self, name: str) -> ProxyState:
        return ProxyState.from_json(await self._request("GET", f"/proxies/{name}"))

    async def reset(self) -> None:
        """Re-enable every proxy and remove every toxic (verified)."""
        await self._request("POST", "/reset")
        for data in (await self._request("GET", "/proxies")).values():
            state = ProxyState.from_json(data)
            if not state.enabled or state.toxics:
                raise ToxiproxyStateError(f"{self.url}: /reset left {state.name} as {state}")

    # -- proxies
    async def create_proxy(
        self,
        name: str,
        upstream: str,
        *,
        listen_host: str = LOOPBACK,
        listen_port: int | None = None,
    ) -> Proxy:
        """Create a proxy ``listen_host:listen_port`` → ``upstream`` (``host:port``).

        Without ``listen_port`` a port is reserved from the harness allocator (outside the
        kernel's ephemeral range, so re-enabling the proxy can always rebind it) and released
        by :meth:`aclose`.
        """
        owned = listen_port is None
        port = self._ports.allocate() if listen_port is None else listen_port
        try:
            body = {"name": name, "listen": f"{listen_host}:{port}", "upstream": upstream}
            data = await self._request("POST", "/proxies", json=body)
        except BaseException:
            if owned:
                self._ports.release(port)
            raise
        if owned:
            self._owned_ports.append(port)
        state = await self.get_proxy(name)
        if state.upstream != upstream or not state.enabled:
            raise ToxiproxyStateError(f"{self.url}: proxy {name} created as {state}")
        host, _, real_port = (data or {}).get("listen", state.listen).rpartition(":")
        return Proxy(name, host or listen_host, int(real_port), upstream, self)

    async def disable(self, proxy: Proxy | str) -> None:
        """Stop listening and close every connection through the proxy (verified)."""
        await self._set_enabled(proxy, False)

    async def enable(self, proxy: Proxy | str) -> None:
        await self._set_enabled(proxy, True)

    async def _set_enabled(self, proxy: Proxy | str, enabled: bool) -> None:
        name = proxy if isinstance(proxy, str) else proxy.name
        path = f"/proxies/{name}"
        try:
            await self._request("PATCH", path, json={"enabled": enabled})
        except ToxiproxyAPIError as exc:
            if exc.status != 405:
                raise
            await self._request("POST", path, json={"enabled": enabled})  # servers < 2.6
        state = await self.get_proxy(name)
        if state.enabled != enabled:
            raise ToxiproxyStateError(f"{self.url}: proxy {name} enabled={state.enabled}")

    # -- toxics
    async def list_toxics(self, proxy: Proxy | str) -> list[Toxic]:
        name = proxy if isinstance(proxy, str) else proxy.name
        data = await self._request("GET", f"/proxies/{name}/toxics")
        return [Toxic.from_json(t) for t in data or ()]

    async def add_toxic(
        self,
        proxy: Proxy | str,
        type: ToxicType,
        *,
        stream: Stream = "downstream",
        attributes: Mapping[str, int | float] | None = None,
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> Toxic:
        """Add a toxic; it applies to existing connections too.  Returns it as read back.

        ``stream="upstream"`` is client→server data, ``"downstream"`` server→client.  The
        default name is ``<type>_<stream>``, as on the server.
        """
        attributes = dict(attributes or {})
        _check_toxic(type, stream, attributes, toxicity)
        toxic_name = name or f"{type}_{stream}"
        proxy_name = proxy if isinstance(proxy, str) else proxy.name
        body = {
            "name": toxic_name,
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        await self._request("POST", f"/proxies/{proxy_name}/toxics", json=body)
        return await self._verify_toxic(proxy_name, toxic_name, type, stream, attributes)

    async def remove_toxic(
        self, proxy: Proxy | str, name: str, *, missing_ok: bool = False
    ) -> None:
        """Remove a toxic (verified).  Removing a ``timeout`` toxic closes its connections."""
        proxy_name = proxy if isinstance(proxy, str) else proxy.name
        try:
            await self._request("DELETE", f"/proxies/{proxy_name}/toxics/{name}")
        except ToxiproxyAPIError as exc:
            if not (missing_ok and exc.status == 404):
                raise
        if any(t.name == name for t in await self.list_toxics(proxy_name)):
            raise ToxiproxyStateError(f"{self.url}: toxic {name} still on {proxy_name}")

    async def _verify_toxic(
        self, proxy_name: str, name: str, type: str, stream: str, attributes: Mapping[str, Any]
    ) -> Toxic:
        found = next((t for t in await self.list_toxics(proxy_name) if t.name == name), None)
        if (
            found is None
            or found.type != type
            or found.stream != stream
            or any(found.attributes.get(k) != v for k, v in attributes.items())
        ):
            raise ToxiproxyStateError(
                f"{self.url}: {proxy_name} should have {type}/{stream} toxic {name} "
                f"{dict(attributes)}, has {found}"
            )
        return found


async def start_toxiproxy(
    supervisor: Supervisor,
    name: str = "toxiproxy",
    *,
    seed: int | None = None,
    ports: PortAllocator | None = None,
) -> ToxiproxyServer:
    """Start ``toxiproxy-server`` on a port of ``ports`` under ``supervisor``; return its client
    once GET /version works. The caller owns the returned client (``await server.aclose()``,
    which also releases the port).
    """
    binary = find_binary("toxiproxy-server")
    allocator = ports or default_allocator()
    port = allocator.allocate()
    argv = [binary, "-host", LOOPBACK, "-port", str(port)]
    if seed is not None:
        argv += ["-seed", str(seed)]
    spec = ProcessSpec(
        name=name,
        argv=argv,
        env={"LOG_LEVEL": "warn"},  # at "info" Toxiproxy logs every proxied connection
        ready=http_ready(f"http://{LOOPBACK}:{port}/version"),
        ready_timeout=15.0,
        stop_grace=3.0,
    )
    try:
        process = await supervisor.start(spec)
    except BaseException:
        allocator.release(port)
        raise
    server = ToxiproxyServer(LOOPBACK, port, process=process, ports=allocator)
    server._owned_ports.append(port)
    return server
