"""Command palette providers.

On the live run screen (``FaultCommands``): every fault kind on every target of the live
cluster with its default parameters ("kill node-2 (restart after 2 s)", "add 200 ms latency to
node-1->redis for 10 s"), a phrase typed with its own numbers ("partition node-1 from redis for
10 s", "leak 50 MB/s on node-1"), "Fault dialog: <kind>…" to fill one in, and the heals. On the
browser (``BrowserCommands``): run an experiment, replay or attach to a run folder.

A typed phrase is read literally (tui.catalog.parse_fault_phrase) and its reading is always
the first hit: what it says is what is sent, or, when the harness would refuse it (a node the
cluster lacks, a node given to a link fault, a negative number), the first hit says why and
sends nothing, with valid readings after it to pick from. Fuzzy matches of the listed
commands come below both.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from .catalog import (
    FAULT_KINDS,
    PhraseError,
    confirmation,
    default_request,
    parse_fault_phrase,
    targets_for,
)

# Scores: the literal reading of the phrase above every fuzzy match (whose scores Textual's
# matcher leaves unbounded: they are squashed below LITERAL here).
LITERAL = 1000.0

if TYPE_CHECKING:
    from .screens.browser import BrowserScreen
    from .screens.live import LiveRunScreen

__all__ = ["BrowserCommands", "FaultCommands"]


class FaultCommands(Provider):
    @property
    def live(self) -> LiveRunScreen | None:
        screen = self.screen
        from .screens.live import LiveRunScreen

        if isinstance(screen, LiveRunScreen) and screen.mode != "replay" \
                and screen.state.accepts_faults:
            return screen
        return None

    def _commands(self, live: LiveRunScreen) -> Iterator[tuple[str, Any, str]]:
        topology = live.state.topology()
        for fault in live.state.active_faults():
            yield (f"Heal {fault.fault_id}: {fault.description}",
                   partial(live.heal, fault.fault_id), "heal this fault now")
        yield ("Heal all faults", partial(live.heal, None), "heal every active fault")
        for kind in FAULT_KINDS:
            for target in targets_for(kind, topology):
                request = default_request(kind, target)
                text = request.describe()
                yield (text[0].upper() + text[1:], partial(live.inject, request),
                       f"inject {kind} on {target} now (defaults)"
                       + (" · asks to confirm" if confirmation(request) else ""))
            yield (f"Fault dialog: {kind}…", partial(live.open_fault_dialog, kind=kind),
                   FAULT_KINDS[kind].summary)

    async def discover(self) -> Hits:
        live = self.live
        if live is None:
            return
        for text, command, help_text in self._commands(live):
            if text.startswith(("Heal", "Fault dialog")):
                yield DiscoveryHit(text, command, help=help_text)

    def _literal(self, live: LiveRunScreen, query: str) -> Iterator[Hit]:
        try:
            request = parse_fault_phrase(query, live.state.topology())
        except PhraseError as exc:
            yield Hit(LITERAL, f"Refused: {exc}", partial(self._refused, str(exc)),
                      text=f"Refused: {exc}", help="nothing is sent; pick a reading below or "
                                                  "change the phrase")
            for rank, suggestion in enumerate(exc.suggestions, start=1):
                text = suggestion.describe()
                yield Hit(LITERAL - rank, f"Did you mean: {text}",
                          partial(live.inject, suggestion), text=text,
                          help="send this fault instead")
            return
        if request is None:
            return
        text = request.describe()
        why = confirmation(request)
        yield Hit(LITERAL, f"Inject: {text}", partial(live.inject, request), text=text,
                  help=("asks to confirm: " + why) if why else
                  "send this fault to the run's control.sock now")
        yield Hit(LITERAL - 0.5, f"Edit in the fault dialog: {text}…",
                  partial(live.open_fault_dialog, preset=request), text=text,
                  help="open the fault dialog filled in with it")

    def _refused(self, message: str) -> None:
        self.app.notify(message, title="Fault refused", severity="error")

    async def search(self, query: str) -> Hits:
        live = self.live
        if live is None:
            return
        for hit in self._literal(live, query):
            yield hit
        matcher = self.matcher(query)
        for text, command, help_text in self._commands(live):
            score = matcher.match(text)
            if score > 0:
                yield Hit(LITERAL / 2 * score / (score + 1), matcher.highlight(text), command,
                          text=text, help=help_text)


class BrowserCommands(Provider):
    @property
    def browser(self) -> BrowserScreen | None:
        from .screens.browser import BrowserScreen

        return self.screen if isinstance(self.screen, BrowserScreen) else None

    def _commands(self, browser: BrowserScreen) -> Iterator[tuple[str, Any, str]]:
        for entry in browser.experiments:
            yield (f"Run experiment {entry.name}", partial(browser.run_experiment, entry),
                   entry.summary)
        for run in browser.runs:
            if run.in_progress:
                yield (f"Attach to {run.name}", partial(browser.attach, run), "in progress")
            else:
                yield (f"Replay {run.name}", partial(browser.replay, run, None),
                       f"verdict: {run.verdict}")

    async def discover(self) -> Hits:
        browser = self.browser
        if browser is None:
            return
        for text, command, help_text in self._commands(browser):
            yield DiscoveryHit(text, command, help=help_text)

    async def search(self, query: str) -> Hits:
        browser = self.browser
        if browser is None:
            return
        matcher = self.matcher(query)
        for text, command, help_text in self._commands(browser):
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, text=text, help=help_text)
