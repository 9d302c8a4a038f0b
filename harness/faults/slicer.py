"""slicer: fragment a link's stream into small pieces with pauses between them."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from server.schema import SettingError

from .base import on, param, parameters, register
from .link_toxic import Direction, LinkToxic, direction

BYTES = "an integer number of bytes"


@parameters
class SlicerParams:
    average_size: int = param(64, "bytes", "mean piece size", expect=BYTES, ge=1)
    size_variation: int = param(32, "bytes", "± variation of the piece size (below "
                                "average_size)", expect=BYTES, ge=0)
    delay_us: int = param(10, "µs", "pause between pieces",
                          expect="an integer number of microseconds", ge=0)
    direction: Direction = direction("downstream")

    @model_validator(mode="after")
    def _variation_below_average(self) -> SlicerParams:
        if self.size_variation >= self.average_size:
            raise SettingError("size_variation", f"expected {BYTES} below average_size "
                               f"({self.average_size}), got {self.size_variation}")
        return self


@register
class Slicer(LinkToxic):
    kind = "slicer"
    summary = ("Fragment the stream into small pieces with a pause between them (Toxiproxy "
               "slicer): websocket frames arrive in many TCP segments.")
    duration_s = 10.0
    words = r"\bslic"
    Params = SlicerParams
    toxic_type = "slicer"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"slice the stream on {on(target)} into ~{p.average_size} B pieces"

    def attributes(self) -> dict[str, Any]:
        return {"average_size": self.params.average_size,
                "size_variation": self.params.size_variation, "delay": self.params.delay_us}
