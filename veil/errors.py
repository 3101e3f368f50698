"""Every error Veil raises on purpose, in one tree.

    VeilError                      code: JSON-RPC error code sent to MCP clients
    ├── ConfigError                the config file or a field in it is wrong
    ├── PolicyError                a policy document does not parse or validate
    ├── DatabaseError              the database cannot be reached or migrated
    ├── AuthError                  missing, wrong, expired or revoked credentials
    ├── AccessDenied               the principal may not use this tool
    ├── FlowDenied                 policy forbids a real value reaching this destination
    ├── TokenError                 a token is unknown to the scope, expired or erased
    │   └── SubstitutionRefused    a token stands where its value cannot be written safely
    ├── UpstreamError              an upstream server failed, died or is unreachable
    ├── ToolNotFound               the agent named a tool that does not exist
    ├── InvalidArguments           arguments do not match the tool's schema
    │   └── HeaderMismatch         an Mcp-Param-* header disagrees with its argument (2026-07-28)
    ├── AuditUnavailable           an audit event could not be made durable (fail closed)
    ├── SandboxError               code execution could not run safely
    ├── TokenizeBudgetExceeded     tokenising a result ran out of its time budget (fail closed)
    └── Stopping                   Veil is shutting down and takes no new requests (retry elsewhere)

Messages name the file, field, tool, rule or token type and say what to do. They never carry
raw values from upstream payloads: a message may reach the agent, the logs and the audit table.
Foreign exceptions are translated where they enter (``raise X(...) from exc``).
"""

from __future__ import annotations

from typing import Any

# JSON-RPC reserved codes and Veil's own application codes (-32000..-32099 are for servers).
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020  # mcp_types.HEADER_MISMATCH: a routing header disagrees with the body


class VeilError(Exception):
    """Base of all deliberate Veil errors; ``code`` is the JSON-RPC code an MCP client receives."""

    code: int = INTERNAL_ERROR

    def __init__(self, message: str, *, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data  # JSON-RPC error data for the agent (an upstream's, tokenised); None: none
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(VeilError):
    code = -32001


class PolicyError(VeilError):
    """A policy document is invalid; carries file, line and column where known."""

    code = -32002

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, column: int | None = None
    ) -> None:
        where = file or "<policy>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")
        self.file, self.line, self.column = file, line, column
        self.detail = message


class DatabaseError(VeilError):
    code = -32003


class AuthError(VeilError):
    code = -32004


class AccessDenied(VeilError):
    code = -32005

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule


class FlowDenied(VeilError):
    code = -32006

    def __init__(self, message: str, *, rule: str | None = None, entity_type: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.entity_type = entity_type


class TokenError(VeilError):
    code = -32007


class SubstitutionRefused(TokenError):
    """A token stands where its value cannot be written safely (outside a SQL literal, in a shell
    comment, ...): the call is refused and audited as denied. Names the argument and token only."""

    def __init__(self, message: str, *, token: str, argument: str) -> None:
        super().__init__(message)
        self.token = token
        self.argument = argument


class UpstreamError(VeilError):
    """``reason`` (when Veil itself, not the upstream, decided the failure) goes on the audit row:
    ``unreachable``, ``backoff``, ``connection_lost`` or ``timeout``."""

    code = -32008

    def __init__(self, message: str, *, reason: str | None = None, code: int | None = None, data: Any = None) -> None:
        super().__init__(message, code=code, data=data)
        self.reason = reason


class ToolNotFound(VeilError):
    code = INVALID_PARAMS


class InvalidArguments(VeilError):
    code = INVALID_PARAMS


class HeaderMismatch(InvalidArguments):
    """A 2026-07-28 request's ``Mcp-Param-*`` header (an argument mirrored for intermediaries that
    route on it) disagrees with the body; the SDK's code for it, which its transport answers 400."""

    code = HEADER_MISMATCH


class AuditUnavailable(VeilError):
    code = -32009


class SandboxError(VeilError):
    code = -32010


class TokenizeBudgetExceeded(VeilError):
    """Tokenising a result did not finish within the call's time budget: the result is withheld,
    never passed on partly tokenised. Raised by detection between its batches and by the
    tokenizer between its stages; the tokenizer's message names the setting to raise."""

    code = -32011


class Stopping(VeilError):
    """Veil received SIGTERM or SIGINT: it finishes the calls in flight and takes no new ones.
    Over HTTP the answer is a 503 (a load balancer or client retries on another replica)."""

    code = -32012
