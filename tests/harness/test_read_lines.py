"""harness.procs.read_lines: the line reader of every JSON-lines socket of a run (the control
socket, the publisher's and the real-client tools')."""

from __future__ import annotations

import trio
import trio.testing

from harness.procs import read_lines


async def _collect(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
    into.extend([line async for line in read_lines(stream)])


async def test_lines_split_across_reads_and_batched_in_one_read_come_out_whole() -> None:
    send, receive = trio.testing.memory_stream_pair()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, receive, got)
        for chunk in (b'{"a": 1}\n{"b"', b': 2}\n\n{"c": 3}\n{"d', b'": 4}\nunfinished'):
            await send.send_all(chunk)
            await trio.sleep(0.01)
        await send.aclose()  # EOF: the unterminated tail is not a line
    assert got == [b'{"a": 1}', b'{"b": 2}', b"", b'{"c": 3}', b'{"d": 4}']


async def test_a_broken_stream_ends_the_lines_quietly() -> None:
    send, receive = trio.testing.lockstep_stream_pair()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, receive, got)
        await send.send_all(b"one\n")
        await trio.sleep(0.01)
        await receive.aclose()  # closed under the reader: ClosedResourceError, caught
    assert got == [b"one"]
