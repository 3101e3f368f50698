"""Tracing sends nothing to an address nobody configured, and stays off unless asked for."""

from __future__ import annotations

import pytest

from veil.errors import ConfigError
from veil.ops import tracing


def test_tracing_off_sets_nothing_up() -> None:
    tracing.setup(False)
    assert not tracing.enabled()


def test_otlp_without_an_endpoint_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        tracing.setup(True)
    assert not tracing.enabled()


def test_an_unknown_exporter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="otlp, console or none"):
        tracing.setup(True)
    assert not tracing.enabled()
