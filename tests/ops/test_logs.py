"""The JSON log format: one object per line, and an exception's message never in it."""

from __future__ import annotations

import json
import logging
import sys

from veil.ops.logs import JsonFormatter


def test_json_lines_carry_the_message_and_the_exception_class_not_its_message() -> None:
    try:
        raise ValueError("jane.doe@example.com is not a customer")
    except ValueError:
        record = logging.LogRecord("veil.x", logging.ERROR, __file__, 1, "failed in %s", ("tokenise",), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "failed in tokenise" and out["level"] == "error" and out["logger"] == "veil.x"
    assert out["exc_type"] == "ValueError" and out["exc_frames"]
    assert "jane.doe" not in line


def test_the_command_line_format_wins_over_the_config_file() -> None:
    """``veil --log-format json`` (or VEIL_LOG_FORMAT) then a config saying text: still JSON.
    In a subprocess: pytest owns this process's root logger."""
    import subprocess

    code = (
        "import logging; from veil.ops import logs\n"
        "logs.configure(logging.INFO, 'json'); logs.apply_config('text')\n"
        "logging.getLogger('veil.t').warning('hello %s', 'ops')\n"
        "logs.configure(logging.INFO, None); logs.apply_config('json')\n"
        "logging.getLogger('veil.t').warning('from the config')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    first, second = out.stderr.splitlines()
    assert json.loads(first)["message"] == "hello ops"
    assert json.loads(second)["message"] == "from the config"
