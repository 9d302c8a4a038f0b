"""The checker's parts, each a pure function of the recorded history (composed in
:mod:`harness.checker`, rendered by :mod:`harness.render`):

- :mod:`.model`: one pass over the ops into a :class:`~.model.RunData` (publishes, viewers,
  subscriptions with their runs of positions, the position table, per-update latencies, stale
  windows, faults, phases);
- :mod:`.delivery`: who owed which update and whether it arrived (lost, delivered, unexpected,
  Jepsen set-full semantics for indeterminate publishes);
- :mod:`.order`: duplicates and reorders, judged on server positions for every delivery;
- :mod:`.latency`: publish-to-receive percentiles, overall, per phase and per fault window;
- :mod:`.recovery`: per fault, the stale windows of the viewers it disconnected and how long
  after its heal everything published before it had arrived;
- :mod:`.groups`: the totals per client group (the Python fleet, each ``[[client_groups]]``).
"""
