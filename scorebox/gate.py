"""Promotion gates: ``METRIC OP champion [+|- MARGIN]`` or ``METRIC OP NUMBER``, for example
``roc_auc >= champion + 0.005`` or ``rmse <= champion`` or ``accuracy > 0.9``."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from scorebox.errors import ConfigError

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
_GATE = re.compile(
    r"^\s*(?P<metric>[a-z_][a-z0-9_]*)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<number>[-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?)|(?P<ref>[a-z][a-z0-9_-]*)"
    r"(?:\s*(?P<sign>[-+])\s*(?P<margin>\d+(?:\.\d*)?(?:e[-+]?\d+)?))?)\s*$"
)


@dataclass(frozen=True)
class Gate:
    """A parsed gate."""

    text: str
    metric: str
    op: str
    number: float | None  # an absolute bound, or
    ref: str | None  # the alias whose metric is the bound,
    margin: float  # plus this

    def check(
        self, candidate: dict[str, float], incumbent: dict[str, float] | None
    ) -> tuple[bool, str]:
        """Whether the gate passes for ``candidate``'s metrics against ``incumbent``'s, and the
        comparison in words."""
        if self.metric not in candidate:
            raise ConfigError(
                f"--if {self.text!r}: the candidate has no metric {self.metric!r} (it has "
                f"{', '.join(sorted(candidate)) or 'none'})"
            )
        value = candidate[self.metric]
        if self.number is not None:
            bound, against = self.number, f"{self.number:g}"
        else:
            if incumbent is None or self.metric not in incumbent:
                raise ConfigError(f"--if {self.text!r}: {self.ref} has no metric {self.metric!r}")
            base = incumbent[self.metric]
            bound = base + self.margin
            against = f"{self.ref} {base:.4f}" + (
                f" {'+' if self.margin >= 0 else '-'} {abs(self.margin):g}" if self.margin else ""
            )
        if not (math.isfinite(value) and math.isfinite(bound)):
            raise ConfigError(
                f"--if {self.text!r}: {self.metric} is undefined here ({value} against {bound}); "
                "check the labels, or gate on another metric"
            )
        passed = _OPS[self.op](value, bound)
        shown = self.op if passed else {">=": "<", ">": "<=", "<=": ">", "<": ">="}[self.op]
        return passed, f"{self.metric} {value:.4f} {shown} {against}"


def parse_gate(text: str) -> Gate:
    """``text`` as a Gate, or a ConfigError showing the form."""
    match = _GATE.match(text.lower())
    if match is None or not text.strip():
        raise ConfigError(
            f"--if {text!r}: write METRIC OP champion [+|- MARGIN] or METRIC OP NUMBER, for "
            "example 'roc_auc >= champion + 0.005'"
        )
    margin = float(match["margin"] or 0.0) * (-1 if match["sign"] == "-" else 1)
    number = float(match["number"]) if match["number"] is not None else None
    if not math.isfinite(margin) or (number is not None and not math.isfinite(number)):
        raise ConfigError(f"--if {text!r}: numbers must be finite")
    return Gate(text, match["metric"], match["op"], number, match["ref"], margin)
