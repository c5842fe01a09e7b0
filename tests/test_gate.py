"""scorebox/gate.py: promotion gates as a user writes them after `--if`."""

from __future__ import annotations

import pytest

from scorebox.errors import ConfigError
from scorebox.gate import parse_gate


@pytest.mark.parametrize(
    ("text", "candidate", "champion", "passes"),
    [
        ("roc_auc >= champion + 0.005", {"roc_auc": 0.91}, {"roc_auc": 0.90}, True),
        ("roc_auc >= champion + 0.005", {"roc_auc": 0.904}, {"roc_auc": 0.90}, False),
        ("rmse <= champion", {"rmse": 1.0}, {"rmse": 1.0}, True),
        ("rmse < champion - 0.1", {"rmse": 0.95}, {"rmse": 1.0}, False),
        ("accuracy > 0.9", {"accuracy": 0.95}, None, True),
        ("  LOG_LOSS  <  1e-1 ", {"log_loss": 0.2}, None, False),
    ],
)
def test_a_gate_compares_the_candidate_with_a_number_or_the_champion(
    text: str, candidate: dict[str, float], champion: dict[str, float] | None, passes: bool
) -> None:
    passed, words = parse_gate(text).check(candidate, champion)
    assert passed is passes
    assert words.split()[0] == next(iter(candidate))


@pytest.mark.parametrize(
    "text",
    ["", "roc_auc", "roc_auc => 1", "roc_auc >= champion +", "1 >= roc_auc",
     "roc_auc >= champion + nan", "roc_auc >= 1e999", "roc_auc >= champion; DROP"],
)  # fmt: skip
def test_a_malformed_gate_shows_the_form(text: str) -> None:
    with pytest.raises(ConfigError, match="--if"):
        parse_gate(text)


def test_a_missing_or_undefined_metric_is_one_line_naming_it() -> None:
    gate = parse_gate("roc_auc >= champion")
    with pytest.raises(ConfigError, match=r"no metric 'roc_auc' .*accuracy"):
        gate.check({"accuracy": 0.9}, {"roc_auc": 0.9})
    with pytest.raises(ConfigError, match="champion has no metric"):
        gate.check({"roc_auc": 0.9}, {"accuracy": 0.9})
    with pytest.raises(ConfigError, match="undefined"):
        gate.check({"roc_auc": float("nan")}, {"roc_auc": 0.9})
