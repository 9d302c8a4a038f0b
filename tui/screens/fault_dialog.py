"""The fault dialog: pick a kind, a target among the live nodes and links, its parameters
(widgets, defaults and units generated from the kind's parameter schema) and a duration (empty:
until healed, or until the faults phase ends); returns a ``FaultRequest`` (or None when cancelled).
Values go through the harness's own checks (harness.fault_request: the experiment schema and
the cluster's names), so the dialog refuses what the run would refuse, with the same words."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, Static

from server.schema import Key

from ..catalog import (
    FAULT_KINDS,
    ClusterNames,
    FaultRequest,
    confirmation,
    convert_param,
    default_request,
    targets_for,
)

__all__ = ["FaultDialog"]


class FaultDialog(ModalScreen[FaultRequest | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "inject", "Inject"),
    ]

    def __init__(self, topology: ClusterNames, *, preset: FaultRequest | None = None,
                 kind: str | None = None) -> None:
        super().__init__()
        self.topology = topology
        self.preset = preset
        self.initial_kind = (preset.kind if preset is not None else kind) or "kill_node"
        self.kind: str | None = None
        self._building = False

    def compose(self) -> ComposeResult:
        with Vertical(id="fault-dialog") as dialog:
            dialog.border_title = "Inject a fault"
            dialog.border_subtitle = "ctrl+s inject · esc cancel"
            with VerticalScroll(id="fault-form"):
                with Horizontal(classes="field"):
                    yield Label("kind", classes="field-label")
                    yield Select([(name, name) for name in FAULT_KINDS], id="kind",
                                 value=self.initial_kind, allow_blank=False, compact=True)
                yield Static(id="kind-summary")
                with Horizontal(classes="field"):
                    yield Label("target", classes="field-label")
                    yield Select([], id="target", allow_blank=True, compact=True,
                                 prompt="pick a target")
                yield Vertical(id="params")
                with Horizontal(classes="field", id="duration-row"):
                    yield Label("duration", classes="field-label")
                    yield Input(id="duration", compact=True, placeholder="empty: until healed")
                    yield Label("s", classes="field-unit")
            yield Static(id="preview")
            with Horizontal(id="fault-buttons"):
                yield Button("Inject", variant="error", id="inject", compact=True)
                yield Button("Cancel", id="cancel", compact=True)
        yield Footer(compact=True)

    async def on_mount(self) -> None:
        await self._set_kind(self.initial_kind, self.preset)

    # ---------------------------------------------------------------------------------------

    async def _set_kind(self, kind: str, preset: FaultRequest | None = None) -> None:
        if kind == self.kind:
            return
        self.kind = kind
        self._building = True
        spec = FAULT_KINDS[kind]
        request = preset if preset is not None and preset.kind == kind else default_request(kind)
        self.query_one("#kind-summary", Static).update(Text(spec.summary, style="italic"))
        targets = targets_for(kind, self.topology)
        if request.target not in targets:
            targets.insert(0, request.target)
        target = self.query_one("#target", Select)
        target.set_options([(t, t) for t in targets])
        target.value = request.target
        params = self.query_one("#params", Vertical)
        await params.remove_children()
        rows = []
        for key in spec.keys:
            rows.append(self._param_row(key, request.params.get(key.name, key.default)))
        await params.mount_all(rows)
        duration = self.query_one("#duration", Input)
        self.query_one("#duration-row").display = spec.duration_s is not None
        duration.value = "" if request.duration_s is None else f"{request.duration_s:g}"
        self._building = False
        self._preview()

    def _param_row(self, key: Key, value: Any) -> Widget:
        """One parameter's row, generated from its schema field (type, unit, doc)."""
        widget_id = f"param-{key.name}"
        widget: Widget
        if key.boolean:
            widget = Checkbox("", bool(value), id=widget_id, compact=True)
        elif key.choices:
            widget = Select([(o, o) for o in key.choices], value=value, id=widget_id,
                            allow_blank=False, compact=True)
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            widget = Input(shown, id=widget_id, compact=True)
        widget.tooltip = key.doc
        row = Horizontal(Label(key.name, classes="field-label"), widget,
                         Label("" if key.unit == "—" else key.unit, classes="field-unit"),
                         classes="field param")
        return row

    def build(self) -> FaultRequest:
        """The request the form describes; ValueError saying what is wrong."""
        kind = self.kind
        if kind is None:
            raise ValueError("pick a kind")
        spec = FAULT_KINDS[kind]
        target = self.query_one("#target", Select).value
        if not isinstance(target, str):
            raise ValueError("pick a target")
        params: dict[str, Any] = {}
        for key in spec.keys:
            widget = self.query_one(f"#param-{key.name}")
            if isinstance(widget, Checkbox):
                raw: Any = widget.value
            elif isinstance(widget, Select):
                raw = widget.value
            else:
                assert isinstance(widget, Input)
                raw = widget.value
            params[key.name] = convert_param(kind, key, raw)
        duration: float | None = None
        if spec.duration_s is not None:
            text = self.query_one("#duration", Input).value.strip()
            if text:
                try:
                    duration = float(text)
                except ValueError:
                    raise ValueError(f"duration: expected a number of seconds, got {text!r}")\
                        from None
                if not duration > 0:
                    raise ValueError("duration: expected a number of seconds > 0")
        # The harness's own check (schema and cluster names): what it would refuse, the
        # dialog refuses first, in the same words.
        return FaultRequest(kind, target, params, duration).checked(self.topology)

    def _preview(self) -> None:
        preview = self.query_one("#preview", Static)
        try:
            request = self.build()
        except ValueError as exc:
            preview.update(Text(str(exc), style="bold red"))
            preview.set_class(True, "-error")
            return
        preview.set_class(False, "-error")
        text = Text.assemble(("→ ", "bold"), (request.describe(), "bold"))
        if confirmation(request):
            text.append("  (asks to confirm)", style="dim")
        preview.update(text)

    # ---------------------------------------------------------------------------------------

    @on(Select.Changed, "#kind")
    async def _kind_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            await self._set_kind(event.value)

    @on(Select.Changed)
    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _changed(self) -> None:
        if self.kind is not None and not self._building:
            self._preview()

    @on(Input.Submitted)
    @on(Button.Pressed, "#inject")
    def action_inject(self) -> None:
        if self._building:
            return
        try:
            request = self.build()
        except ValueError as exc:
            self.notify(str(exc), title="Check the fault", severity="error")
            return
        self.dismiss(request)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
