"""The metrics listener of its own (``observability.metrics.listen``): serves the registry while
the gateway runs, and is gone after."""

from __future__ import annotations

import httpx
import pytest

from ops.conftest import free_port
from veil.config import MetricsConfig
from veil.errors import ConfigError
from veil.ops.http import metrics_listener


def test_the_metrics_listener_serves_the_registry_and_stops() -> None:
    port = free_port()
    with metrics_listener(MetricsConfig(listen=f"127.0.0.1:{port}")) as bound:
        assert bound == ("127.0.0.1", port)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "# TYPE veil_calls_total counter" in text and "veil_stage_duration_seconds" in text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_no_listener_without_listen_or_when_disabled() -> None:
    with metrics_listener(MetricsConfig()) as bound:
        assert bound is None
    with metrics_listener(MetricsConfig(enabled=False, listen="127.0.0.1:9")) as bound:
        assert bound is None


def test_listen_must_be_host_and_port() -> None:
    from veil.config import parse_config

    with pytest.raises(ConfigError, match=r"observability\.metrics\.listen"):
        parse_config({"observability": {"metrics": {"listen": "9464"}}})
