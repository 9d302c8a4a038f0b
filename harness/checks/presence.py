"""Presence: every viewer's member list against the users really connected (pure).

A presence viewer joins a presence channel as a user and keeps the member list the way
pusher-js does: the snapshot of ``subscription_succeeded``, then ``member_added`` /
``member_removed``. The fleet records them as ops of the viewer's process::

    invoke members {"channel": c, "user": u}                 the presence subscribe, sent
    ok members {"channel": c, "user": u, "members": [ids]}   a subscription's snapshot
    ok member  {"channel": c, "change": "added" | "removed", "user": id}
    ok drain   {...}                                         the final read (end of history)

Judged, per presence channel, over the viewers that finished their final read (those that
did not fail the run on their own, see :mod:`harness.checker`):

connected users
    The user each finished viewer was joined as at the end (its last snapshot's ``user``):
    after the final read every finished viewer is connected and subscribed.
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

__all__ = ["EXAMPLES", "PRESENCE_OPS", "PresenceResult", "judge_presence"]

EXAMPLES: Final = 5  # problems quoted per kind
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
            "examples": {k: list(v) for k, v in self.examples.items()},
        }


class _View:
    """One viewer's list on one presence channel, rebuilt from its ops."""

    __slots__ = ("members", "user")

    def __init__(self) -> None:
        self.user: str | None = None  # as of the last snapshot
        self.members: set[str] | None = None  # None: no snapshot yet


def judge_presence(ops: Iterable[RawOp]) -> PresenceResult:
    """Judge every presence viewer of a history: (time, process, type, f, value) tuples, each
    process's in its recorded order (other processes' may interleave in any way)."""
    views: dict[tuple[str, str], _View] = {}  # (process, channel) -> view
    finished: set[str] = set()
    presence_processes: set[str] = set()
    events = inconsistent = self_missing = 0
    examples: dict[str, list[str]] = {}

    def note(kind: str, text: str) -> None:
        quoted = examples.setdefault(kind, [])
        if len(quoted) < EXAMPLES:
            quoted.append(text)

    for time, process, op_type, f, value in ops:
        if op_type == "invoke" and f == "members":  # the presence subscribe was sent
            views.setdefault((process, str(value.get("channel"))), _View())
            presence_processes.add(process)
            continue
        if op_type != "ok":
            continue
        if f == "drain":
            finished.add(process)
        elif f == "members":
            channel, user = str(value.get("channel")), str(value.get("user"))
            members = {str(m) for m in value.get("members") or ()}
            view = views.setdefault((process, channel), _View())
            presence_processes.add(process)
            view.user, view.members = user, members
            if user not in members:
                self_missing += 1
                note("self_missing", f"{process} on {channel}: snapshot without its own "
                     f"user {user} at {time:.3f}")
        elif f == "member":
            channel, user = str(value.get("channel")), str(value.get("user"))
            change = value.get("change")
            view = views.setdefault((process, channel), _View())
            presence_processes.add(process)
            events += 1
            if view.members is None:
                continue  # cannot happen on a well-behaved server: events follow a snapshot
            if change == "added":
                if user in view.members:
                    inconsistent += 1
                    note("inconsistent", f"{process} on {channel}: member_added {user} "
                         f"already a member at {time:.3f}")
                view.members.add(user)
            elif change == "removed":
                if user not in view.members:
                    inconsistent += 1
                    note("inconsistent", f"{process} on {channel}: member_removed {user} "
                         f"not a member at {time:.3f}")
                view.members.discard(user)

    judged = {key: view for key, view in views.items() if key[0] in finished}
    connected: dict[str, set[str]] = {}
    for (_, channel), view in judged.items():
        if view.user is not None:
            connected.setdefault(channel, set()).add(view.user)
    ghosts = missing = no_snapshot = 0
    for (process, channel), view in sorted(judged.items()):
        if view.members is None:
            no_snapshot += 1
            note("no_snapshot", f"{process} on {channel}: never subscribed")
            continue
        truth = connected.get(channel, set())
        extra, absent = view.members - truth, truth - view.members
        ghosts += len(extra)
        missing += len(absent)
        if extra:
            note("ghosts", f"{process} on {channel}: {_ids(extra)} listed, not connected")
        if absent:
            note("missing", f"{process} on {channel}: {_ids(absent)} connected, not listed")
    return PresenceResult(
        channels=len({channel for _, channel in views}),
        viewers=len(presence_processes),
        finished=len(presence_processes & finished),
        connected_users=sum(len(users) for users in connected.values()),
        member_events=events, ghosts=ghosts, missing=missing, inconsistent=inconsistent,
        self_missing=self_missing, no_snapshot=no_snapshot, examples=examples)


def _ids(users: set[str]) -> str:
    listed = sorted(users)
    more = f" (+{len(listed) - EXAMPLES})" if len(listed) > EXAMPLES else ""
    return ", ".join(listed[:EXAMPLES]) + more
