"""The help screen (``?``): every key of every screen, and how the TUI talks to a run."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

__all__ = ["HELP", "HelpScreen"]

HELP = """\
# turnout tui

Watch a local cluster under an election-night workload, break it by hand, and see whether
every client kept every update: nothing **lost**, **duplicated** or **reordered**.

## Browser

| key | what |
|-----|------|
| `1` / `2` / `3` | Experiments tab / Runs tab / Capacity tab |
| `r`, `enter` | run the highlighted experiment (asks first, saying how big it is, when \
another run is in progress or it has 2,000 clients or more) |
| `o`, `enter` | replay the highlighted run, opened at its end |
| `p` | replay it playing from its start, at 1x |
| `a`, `enter` | attach to the highlighted run in progress |
| `l` / `m` / `c` | its log files / its report.md / copy its folder's path |
| `t`, `enter` | open the highlighted capacity search, trial by trial |
| `/` | filter the list (`esc` clears the filter) |

The run list refreshes every 5 s and when you come back from a run. A run's detail ends
with where its CPU went (per component: CPU seconds, share, cores, µs per delivery).

## Capacity search

`turnout capacity FILE` bisects the viewer count; its folder in `runs/` lists every trial
(holds or fails, p99 in steady and settle, lost) on the viewer axis. `enter`/`o` replays a
trial's run (`a` attaches to the one running), `l` its logs, `m` capacity.md, `c` copies
the search's path.

## Live run, attached run, replay

| key | what |
|-----|------|
| `f` | fault dialog: kind, target, parameters, duration |
| `h` | heal the fault selected in the timeline (else the latest active one) |
| `H` | heal every active fault |
| `s` | stop the run this TUI started (asks; SIGTERM: the cluster is torn down) |
| `l` | the run's log files (every node, Redis, HAProxy, Toxiproxy, the fleet) |
| `m` | report.md, once the run has one |
| `/` | filter the event log (`esc` clears it) |
| `c` | copy the run folder's path (terminal clipboard) |
| `tab` | next pane (it scrolls into view on a small terminal) |
| `esc` | back to the browser (a run started here goes on: attach again) |
| `ctrl+p` | command palette: type a fault, e.g. "kill node-2", \
"partition node-1 from redis for 10 s", "add 300 ms latency to clients", \
"leak 50 MB/s on node-1" |

Fault keys are offered while the run takes faults (its steady and faults phases). What you
type is what is sent, or nothing: a node the cluster lacks, a node given to a link fault or a
negative number is refused with the reason. Faults that take a process down, and faults on
every node or a random one, ask first.

In a replay: `space` play/pause, `←`/`→` 5 s back/on, `shift+←`/`→` 30 s, `home`/`end`, \
`-`/`+` speed (¼x to 100x).

Counters are green while zero and red when not. During a run they show the clients' own
provisional numbers; the verdict brings the checker's, and the verdict banner every invariant
against its limit and each violation. Every time shown is seconds since the run started, as in
report.json. The last pane says where the run's CPU went: over the last 5 s while it runs,
over the whole run with the verdict. Each chart column covers a fixed number of seconds (in
its title); RSS is drawn from 0, on one scale for every node.

## Everywhere

`?` this help · `ctrl+p` command palette · `q` quit (asks first if a run started here is still
running, and stops it) · closing the terminal stops the runs started here

## How it talks to a run

A run is `python -m harness run FILE --out runs/<time>-<name>`, the same command as a
headless run. The TUI tails the folder's `events.jsonl` (one JSON event per line: run, phase,
wait, status every second, fault, heal, log, stopped, verdict) and sends commands as JSON
lines to the folder's `control.sock` (inject, heal, heal_all). See docs/tui.md.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help") as scroll:
            scroll.border_title = "Help"
            yield Markdown(HELP)
        yield Footer(compact=True)

    def action_close(self) -> None:
        self.dismiss(None)
