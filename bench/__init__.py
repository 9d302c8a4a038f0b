"""Benchmarks of the turnout server. Run them all with ``.venv/bin/python -m bench``.

``bench.fanout`` measures server CPU per delivered message and RSS per idle connection for
turnout next to the raw non-blocking ``socket.send`` floor and a naive trio-websocket loop,
all in the same run. Method and results: docs/benchmarks.md.
"""
