"""Log format: Veil's usual text lines, or one JSON object per line for log shippers.

Why JSON is only a format: what Veil logs is already written to carry no payload (stage names,
error classes, upstream names, counts; see veil/proxy/runner.py), and the JSON formatter adds no
field that could carry more: it writes the formatted message, never the record's arguments
separately, and for an exception its class and the frames (file, line, function), never its
message, which may quote data.

Precedence: ``veil --log-format`` (or ``VEIL_LOG_FORMAT``) over ``observability.log_format`` in
the config file, over text.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")

# Third-party loggers that write message bodies at DEBUG (sse_starlette: every chunk sent to an
# agent, which echoes the agent's own input): held at INFO even at -vv, so no log line carries a body.
QUIET = ("sse_starlette",)

_explicit: str | None = None  # set from the command line; the config file does not override it


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}`` plus ``exc_type`` and ``exc_frames`` for exceptions."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc_frames"] = [
                f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in traceback.extract_tb(record.exc_info[2])
            ]
        return json.dumps(out, ensure_ascii=False)


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


class _VeilHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler Veil installs (told apart from handlers others installed)."""


def configure(level: int, fmt: str | None) -> None:
    """Set up the root logger on stderr (called by the ``veil`` command before any subcommand).
    ``fmt`` None: text until a config file says otherwise. Like ``logging.basicConfig``, leaves
    a root logger alone that someone else (an embedding program, pytest) already set up."""
    global _explicit
    _explicit = fmt
    for name in QUIET:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    root = logging.getLogger()
    if any(not isinstance(h, _VeilHandler) for h in root.handlers):
        return
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = _VeilHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt or "text"))
    root.addHandler(handler)
    root.setLevel(level)


def apply_config(fmt: str) -> None:
    """Switch the root handlers to the config file's format, unless the command line chose one."""
    if _explicit is not None:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _VeilHandler):
            handler.setFormatter(_formatter(fmt))
