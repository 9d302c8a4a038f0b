"""Presence: every viewer's member list against the users really connected (pure).

A presence viewer joins a presence channel as a user and keeps the member list the way
pusher-js does: the snapshot of ``subscription_succeeded``, then ``member_added`` /
``member_removed``. The fleet records them as ops of the viewer's process::

    invoke members {"channel": c, "user": u}                 the presence subscribe, sent
    ok members {"channel": c, "user": u, "members": [ids]}   a subscription's snapshot
    ok member  {"channel": c, "change": "added" | "removed", "user": id}
    ok drain   {...}                                         the final read (end of history)

Judged, per presence channel, over the viewers that finished their final read (those that
did not fail the run on their own, see :mod:`harness.checker`). A viewer's list is judged as it
stood at its ``drain``:

connected users
    The user each finished viewer was joined as at the end (its last snapshot's ``user``).
    Viewers finish one by one and each closes its connection, so a viewer still reading hears
    ``member_removed`` for users whose viewer already finished: such a *departure* (a removal
    of a finished viewer's user, received after that viewer's drain) keeps the user in the
    judged list. A user that joined less than :data:`JOIN_MARGIN_S` before a viewer's drain
    (a viewer that reconnected during the final read) is not required in its list.
ghost
    A (viewer, user) pair: the user is in the viewer's final list but no finished viewer is
    connected as it (a dead node's member nobody removed, a leave that was lost).
missing
    A (viewer, user) pair: a connected user absent from the viewer's final list (a join that
    never reached it).
inconsistent
    A member event that contradicts the list it applies to: ``member_added`` of a user already
    in it (sent twice: per connection or per node instead of once per user) or
    ``member_removed`` of a user not in it.
self missing
    A snapshot that does not list the viewer's own user (the join and its snapshot disagree).
no snapshot
    A finished viewer whose presence subscription never succeeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["EXAMPLES", "JOIN_MARGIN_S", "PRESENCE_OPS", "PresenceResult", "judge_presence"]

EXAMPLES: Final = 5  # problems quoted per kind
#: a join this close before a viewer's drain may not have reached it yet
JOIN_MARGIN_S: Final = 1.0
#: the ``f`` of every op this part reads (the checker keeps only these for it)
PRESENCE_OPS: Final = frozenset({"members", "member", "drain"})
#: (time, process, type, f, value), as the checker streams ops
RawOp = tuple[float, str, str, str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class PresenceResult:
    channels: int  # presence channels with at least one viewer
    viewers: int  # viewers that joined a presence channel (finished or not)
    finished: int  # of those, the ones judged
    connected_users: int  # (channel, user) pairs connected at the end
    member_events: int
    ghosts: int
    missing: int
    inconsistent: int
    self_missing: int
    no_snapshot: int
    departures: int = 0  # removals of finished viewers' users during the final read
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def problems(self) -> int:
        return (self.ghosts + self.missing + self.inconsistent + self.self_missing
                + self.no_snapshot)

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels, "viewers": self.viewers, "finished": self.finished,
            "connected_users": self.connected_users, "member_events": self.member_events,
            "ghosts": self.ghosts, "missing": self.missing, "inconsistent": self.inconsistent,
            "self_missing": self.self_missing, "no_snapshot": self.no_snapshot,
            "departures": self.departures,
            "examples": {k: list(v) for k, v in self.examples.items()},
        }


class _View:
    """One viewer's ops on one presence channel, in its recorded order."""

    __slots__ = ("joined_at", "ops", "user")

    def __init__(self) -> None:
        self.user: str | None = None  # as of the last snapshot
        self.joined_at = 0.0  # time of the last snapshot
        #: (time, "snapshot" | "added" | "removed", users, the viewer's own user for a snapshot)
        self.ops: list[tuple[float, str, tuple[str, ...], str]] = []


def judge_presence(ops: Iterable[RawOp]) -> PresenceResult:
    """Judge every presence viewer of a history: (time, process, type, f, value) tuples, each
    process's in its recorded order (other processes' may interleave in any way)."""
    views: dict[tuple[str, str], _View] = {}  # (process, channel) -> view
    drained: dict[str, float] = {}
    events = 0
    for time, process, op_type, f, value in ops:
        if f == "drain":
            if op_type == "ok":
                drained.setdefault(process, time)
            continue
        channel = str(value.get("channel"))
        if f == "members" and op_type == "invoke":  # the presence subscribe was sent
            views.setdefault((process, channel), _View())
        elif f == "members" and op_type == "ok":
            view = views.setdefault((process, channel), _View())
            view.user, view.joined_at = str(value.get("user")), time
            view.ops.append((time, "snapshot", tuple(str(m) for m in
                                                      value.get("members") or ()), view.user))
        elif f == "member" and op_type == "ok":
            events += 1
            change = value.get("change")
            if change in ("added", "removed"):
                views.setdefault((process, channel), _View()).ops.append(
                    (time, str(change), (str(value.get("user")),), ""))

    # Who is connected at the end, per channel: user -> (joined at, its viewer's drain).
    final: dict[str, dict[str, tuple[float, float]]] = {}
    for (process, channel), view in views.items():
        if process in drained and view.user is not None:
            final.setdefault(channel, {})[view.user] = (view.joined_at, drained[process])

    examples: dict[str, list[str]] = {}

    def note(kind: str, text: str) -> None:
        quoted = examples.setdefault(kind, [])
        if len(quoted) < EXAMPLES:
            quoted.append(text)

    ghosts = missing = inconsistent = self_missing = no_snapshot = departures = 0
    for (process, channel), view in sorted(views.items()):
        if process not in drained:
            continue  # the delivery checker fails the run for it
        connected = final.get(channel, {})
        members: set[str] | None = None
        for time, kind, users, own in view.ops:
            if kind == "snapshot":
                members = set(users)
                if own not in members:
                    self_missing += 1
                    note("self_missing", f"{process} on {channel}: snapshot without its own "
                         f"user {own} at {time:.3f}")
                continue
            if members is None:
                continue  # cannot happen on a well-behaved server: events follow a snapshot
            (user,) = users
            if kind == "added":
                if user in members:
                    inconsistent += 1
                    note("inconsistent", f"{process} on {channel}: member_added {user} "
                         f"already a member at {time:.3f}")
                members.add(user)
                continue
            if user not in members:
                inconsistent += 1
                note("inconsistent", f"{process} on {channel}: member_removed {user} not a "
                     f"member at {time:.3f}")
            elif user in connected and connected[user][1] < time:
                departures += 1  # its viewer finished and closed: still judged as present
                continue
            members.discard(user)
        if members is None:
            no_snapshot += 1
            note("no_snapshot", f"{process} on {channel}: never subscribed")
            continue
        drain = drained[process]
        required = {u for u, (joined, _) in connected.items() if joined < drain - JOIN_MARGIN_S}
        extra, absent = members - set(connected), required - members
        ghosts += len(extra)
        missing += len(absent)
        if extra:
            note("ghosts", f"{process} on {channel}: {_ids(extra)} listed, not connected")
        if absent:
            note("missing", f"{process} on {channel}: {_ids(absent)} connected, not listed")
    return PresenceResult(
        channels=len({channel for _, channel in views}),
        viewers=len({process for process, _ in views}),
        finished=len({process for process, _ in views if process in drained}),
        connected_users=sum(len(users) for users in final.values()),
        member_events=events, ghosts=ghosts, missing=missing, inconsistent=inconsistent,
        self_missing=self_missing, no_snapshot=no_snapshot, departures=departures,
        examples=examples)


def _ids(users: set[str]) -> str:
    listed = sorted(users)
    more = f" (+{len(listed) - EXAMPLES})" if len(listed) > EXAMPLES else ""
    return ", ".join(listed[:EXAMPLES]) + more
