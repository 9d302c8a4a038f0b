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
| `1` / `2` | Experiments tab / Runs tab |
| `r`, `enter` | run the highlighted experiment (a new folder in `runs/`) |
| `o`, `enter` | replay the highlighted finished run, as fast as possible |
| `p` | replay it at 1x speed |
| `a`, `enter` | attach to the highlighted run in progress |

The run list refreshes every 5 s and when you come back from a run.

## Live run

| key | what |
|-----|------|
| `f` | fault dialog: kind, target, parameters, duration |
| `h` | heal the fault selected in the timeline (else the latest active one) |
| `H` | heal every active fault |
| `s` | stop the run this TUI started (SIGTERM: the cluster is torn down) |
| `esc` | back to the browser (a run started here goes on: attach again) |
| `ctrl+p` | command palette: type a fault, e.g. "kill node-2", \
"partition node-1 from redis for 10 s", "add 300 ms latency to clients", \
"leak 50 MB/s on node-1" |

Counters are green while zero and red when not. During a run they show the harness's
provisional numbers when it reports them; the verdict brings the checker's.

## Everywhere

`?` this help · `ctrl+p` command palette · `q` quit (stops runs started here)

## How it talks to a run

A run is `python -m harness run FILE --out runs/<time>-<name>`, the same command as a
headless run. The TUI tails the folder's `events.jsonl` (one JSON event per line: run, phase,
status every second, fault, heal, log, verdict) and sends commands as JSON lines to the
folder's `control.sock` (inject, heal, heal_all). See docs/tui.md.
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
