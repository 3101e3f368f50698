"""The gateway's config file: parsed once into typed objects, validated with messages that name
the file and the field.

Accepted shapes:

* Veil YAML (or JSON): ``upstreams: {NAME: {command, args, env, cwd} | {url, headers}}`` plus
  ``database_url``, ``policy``, ``data_dir`` and the optional sections below.
* A Claude-Desktop/Cursor-style ``{"mcpServers": {...}}`` file: the same upstream entries under
  another key; everything else takes its default.

Relative paths (``policy``, ``data_dir``, an upstream's ``cwd``) are resolved against the config
file's directory, so a config works the same wherever ``veil`` is started from. An upstream whose
``command`` is exactly ``python`` or ``python3`` runs with Veil's own interpreter, so a config
works from a virtualenv that is not activated; give a full path to use another interpreter.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from veil import yamlsafe
from veil.errors import ConfigError
from veil.resources import shipped_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = shipped_file("policies", "default.yaml")  # package data in a wheel, see veil/resources.py
UPSTREAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# What an upstream's tool and prompt names are prefixed with. MCP tool names are letters, digits
# and ``_-.``; the prefix is part of such a name, so it uses the same characters (or is empty).
TOOL_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A MIME type or a glob of them (``image/*``), as an upstream's ``binary`` setting lists them.
MIME_GLOB = re.compile(r"^(\*|[a-z0-9.+-]+/(\*|[a-z0-9.+-]+))$")


class _Upstream(_Strict):
    """What every upstream has, however it is reached."""

    prefix: str | None = None  # None: ``NAME__``; see VeilConfig.prefix
    # Binary content (images, audio, resource blobs) cannot be checked for personal data: withheld
    # with a note by default; ``pass`` (every MIME type) or a list of MIME types/globs lets it through.
    binary: str | list[str] = "withhold"

    @field_validator("prefix")
    @classmethod
    def _prefix_chars(cls, prefix: str | None) -> str | None:
        if prefix is not None and not TOOL_PREFIX.match(prefix):
            raise ValueError("a prefix is at most 64 letters, digits, '_', '-' or '.' (or empty)")
        return prefix

    @field_validator("binary")
    @classmethod
    def _mime_types(cls, binary: str | list[str]) -> str | list[str]:
        if isinstance(binary, str) and binary not in ("withhold", "pass"):
            raise ValueError("must be 'withhold', 'pass' or a list of MIME types such as [image/png, 'audio/*']")
        if isinstance(binary, list):
            for mime in binary:
                if not MIME_GLOB.match(mime):
                    raise ValueError(
                        f"{mime!r} is not a MIME type or glob: write e.g. image/png or image/* (lowercase)"
                    )
        return binary

    def binary_passes(self, mime: str | None) -> bool:
        """Whether binary content of this MIME type reaches the agent (see ``binary``)."""
        if self.binary == "pass":
            return True
        if self.binary == "withhold" or not mime:
            return False
        mime = mime.split(";")[0].strip().lower()
        return any(fnmatch.fnmatchcase(mime, glob) for glob in self.binary)


class StdioUpstream(_Upstream):
    """An upstream started as a subprocess speaking MCP over its stdio."""

    command: str
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: Path | None = None


class HttpUpstream(_Upstream):
    """An upstream reached over Streamable HTTP."""

    url: str
    headers: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url


UpstreamConfig = StdioUpstream | HttpUpstream


def _transport(entry: Any) -> str:
    """Which kind of upstream an entry is: an entry with ``url`` and no ``command`` is HTTP, so a
    mistake is reported against that kind's fields only."""
    if isinstance(entry, HttpUpstream):
        return "http"
    if isinstance(entry, dict) and "url" in entry and "command" not in entry:
        return "http"
    return "stdio"


_UpstreamEntry = Annotated[
    Annotated[StdioUpstream, Tag("stdio")] | Annotated[HttpUpstream, Tag("http")], Discriminator(_transport)
]


class PrincipalConfig(_Strict):
    """Who the agent is when it connects over stdio (HTTP requests authenticate instead)."""

    name: str | None = None  # default: the OS user running veil
    roles: list[str] = []
    tenant: str | None = None


class SandboxConfig(_Strict):
    """Limits and pool settings for execute_code; the policy's ``sandbox`` section may tighten them."""

    timeout_s: float = 30.0
    memory_mb: int = 512
    cpu_s: int = 30
    max_processes: int = 32
    max_output_bytes: int = 64 * 1024
    max_file_mb: int = 64
    workspace_mb: int = 256  # the session's whole workspace (its own filesystem)
    max_open_files: int = 256
    pool_size: int = 2
    idle_timeout_s: float = 600.0
    user: str = "veil-sandbox"
    shared_skills_dir: Path | None = None


class JwtConfig(_Strict):
    """Bearer JWTs verified locally against a public key or a JWKS file (never fetched at run time)."""

    issuer: str
    audience: str
    public_key_file: Path | None = None
    jwks_file: Path | None = None
    principal_claim: str = "sub"
    roles_claim: str = "roles"
    tenant_claim: str | None = None
    algorithms: list[str] = ["RS256", "ES256", "EdDSA"]


class AuthConfig(_Strict):
    """How HTTP requests are authenticated. With ``required: false`` (stdio-like local use only)
    unauthenticated HTTP requests run as the configured principal."""

    required: bool = True
    api_keys: bool = True
    jwt: JwtConfig | None = None


class LimitsConfig(_Strict):
    max_message_bytes: int = 4 * 1024 * 1024
    upstream_timeout_s: float = 60.0
    # An HTTP agent session with no request for this long ends, and its upstream processes stop.
    session_idle_timeout_s: float = Field(default=300.0, gt=0)
    # Time budget for tokenising one upstream result; past it the call fails closed (docs/configuration.md).
    tokenize_budget_s: float = Field(default=10.0, gt=0)
    # NER worker processes (veil/tokenizer/nerpool.py); None: one per CPU.
    ner_workers: int | None = Field(default=None, ge=1)
    # On SIGTERM/SIGINT, how long calls in flight may run on before they are cancelled and Veil
    # cleans up and exits (docs/deployment.md#stopping-and-faults). Keep it about 10 s below
    # Kubernetes' terminationGracePeriodSeconds (30 by default), which ends in SIGKILL.
    shutdown_grace_s: float = Field(default=20.0, ge=0)


class AuditConfig(_Strict):
    batch_max_events: int = 256
    batch_max_delay_ms: float = 2.0
    # Signed checkpoints over the chain head (Ed25519 key in DATA_DIR/audit_signing.key).
    checkpoint_every_events: int | None = 1000
    checkpoint_every_s: float | None = 900.0
    # Signed checkpoints are also appended here, outside the database (default DATA_DIR/audit-checkpoints.jsonl).
    checkpoint_file: Path | None = None


class MetricsConfig(_Strict):
    """Prometheus metrics (docs/operations.md). Without ``listen`` they are served at ``/metrics``
    on the MCP listener behind its authentication (API key or JWT); with ``listen: HOST:PORT``
    on a listener of their own, unauthenticated and off the MCP listener, so a deployment can
    keep the scrape port off the agents' network (the usual Kubernetes shape)."""

    enabled: bool = True
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str | None) -> str | None:
        if listen is not None:
            host, sep, port = listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be HOST:PORT, for example 127.0.0.1:9464")
        return listen


class ObservabilityConfig(_Strict):
    """Logs, metrics and traces (docs/operations.md); none of them carries payload values."""

    log_format: Literal["text", "json"] = "text"
    metrics: MetricsConfig = MetricsConfig()
    # OpenTelemetry spans per runner stage; needs the ``otel`` extra, exporter from OTEL_* variables.
    tracing: bool = False


class VeilConfig(_Strict):
    """The whole config; ``source`` is the file it came from, for error messages."""

    upstreams: dict[str, _UpstreamEntry] = {}
    database_url: str | None = None
    # The schema owner, for migrations (docs/deployment.md); database_url is then the runtime role.
    migration_database_url: str | None = None
    policy: Path = DEFAULT_POLICY
    data_dir: Path = Path(".veil")
    expose: Literal["direct", "code", "both"] = "both"
    token_scope: Literal["session", "principal", "tenant"] | None = None  # None: the policy decides
    principal: PrincipalConfig = PrincipalConfig()
    sandbox: SandboxConfig = SandboxConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    audit: AuditConfig = AuditConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    key_file: Path | None = None  # default: DATA_DIR/master.key (created 0600 when missing)
    source: Path | None = None

    @field_validator("upstreams")
    @classmethod
    def _names(cls, upstreams: dict[str, Any]) -> dict[str, Any]:
        for name in upstreams:
            if not UPSTREAM_NAME.match(name):
                raise ValueError(
                    f"upstream name {name!r} must be lowercase letters, digits and '_' "
                    "(it becomes a tool prefix NAME__TOOL and a Python module name)"
                )
        # Two upstreams with one prefix would make every shared tool name ambiguous: refused here.
        # Prefixes that merely overlap ("" and "crm__") are allowed; a tool name that really
        # collides is refused when the tools are listed (veil.proxy.catalogue).
        seen: dict[str, str] = {}
        for name, upstream in upstreams.items():
            prefix = f"{name}__" if upstream.prefix is None else upstream.prefix
            if prefix in seen:
                raise ValueError(
                    f"upstreams '{seen[prefix]}' and '{name}' both use the tool prefix {prefix!r}; "
                    "give one of them another 'prefix' (the empty prefix can serve one upstream only)"
                )
            seen[prefix] = name
        return upstreams

    def prefix(self, upstream: str) -> str:
        """What the agent sees before this upstream's tool and prompt names: the upstream's
        ``prefix`` field, by default ``NAME__``. Policies always name tools ``NAME__TOOL`` whatever
        the prefix, so renaming what agents see never changes what a rule matches."""
        prefix = self.upstreams[upstream].prefix
        return f"{upstream}__" if prefix is None else prefix

    def prefixes(self) -> dict[str, str]:
        """Every upstream's prefix, by upstream name."""
        return {name: self.prefix(name) for name in self.upstreams}


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("stdio", "http")]
    return ".".join(parts) or "<root>"


def parse_config(raw: Any, source: Path | None = None) -> VeilConfig:
    """Validate an already-parsed document; relative paths resolve against ``source``'s folder."""
    where = str(source) if source else "<config>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = dict(raw)
    if "mcpServers" in raw:
        if "upstreams" in raw:
            raise ConfigError(f"{where}: give either 'upstreams' or 'mcpServers', not both")
        servers = raw.pop("mcpServers") or {}
        raw["upstreams"] = {
            name: {
                k: v
                for k, v in entry.items()
                if k in {"command", "args", "env", "cwd", "url", "headers", "prefix", "binary"}
            }
            for name, entry in servers.items()
            if isinstance(entry, dict)
        }
    try:
        config = VeilConfig.model_validate(raw)
    except ValidationError as exc:
        # pydantic messages may echo input values; we name the field and the problem only.
        problems = "; ".join(
            f"field '{_field_path(e['loc'])}': {e['msg']}" for e in exc.errors(include_input=False)[:5]
        )
        raise ConfigError(f"{where}: {problems}. Fix the field and start veil again.") from None
    base = source.parent if source else Path.cwd()
    updates: dict[str, Any] = {"source": source}
    if not config.policy.is_absolute():
        updates["policy"] = (base / config.policy).resolve()
    if not config.data_dir.is_absolute():
        updates["data_dir"] = (base / config.data_dir).resolve()
    if config.key_file is not None and not config.key_file.is_absolute():
        updates["key_file"] = (base / config.key_file).resolve()
    if config.audit.checkpoint_file is not None and not config.audit.checkpoint_file.is_absolute():
        updates["audit"] = config.audit.model_copy(
            update={"checkpoint_file": (base / config.audit.checkpoint_file).resolve()}
        )
    upstreams = {}
    for name, up in config.upstreams.items():
        if isinstance(up, StdioUpstream) and up.cwd is not None and not up.cwd.is_absolute():
            up = up.model_copy(update={"cwd": (base / up.cwd).resolve()})
        if isinstance(up, StdioUpstream) and up.command in ("python", "python3"):
            up = up.model_copy(update={"command": sys.executable})
        upstreams[name] = up
    updates["upstreams"] = upstreams
    return config.model_copy(update=updates)


# Secrets a container gets from its environment rather than a file (docs/deployment.md): set and
# non-empty, they replace the file's field.
ENV_OVERRIDES = {
    "VEIL_DATABASE_URL": "database_url",
    "VEIL_MIGRATION_DATABASE_URL": "migration_database_url",
}


def load_config(path: str | Path) -> VeilConfig:
    """Read a YAML or JSON config file; every failure names the file and what to do.
    ``ENV_OVERRIDES`` (``VEIL_DATABASE_URL``, ``VEIL_MIGRATION_DATABASE_URL``) replace their fields."""
    path = Path(path)
    try:
        text = yamlsafe.read_limited(path).decode("utf-8")
        if path.suffix != ".json":
            yamlsafe.check(text)  # alias bombs, deep nesting: refused before anything expands them
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found. Pass --config with an existing file.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text.") from None
    except yamlsafe.YamlLimitError as exc:
        where = f"{path}:{exc.line}:{exc.column}" if exc.line else str(path)
        raise ConfigError(f"{where}: config file refused: {exc.message}.") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: config file nests too deeply.") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: config file is not valid JSON ({exc.msg}).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: config file is not valid YAML ({problem}).") from None
    raw = raw or {}
    if isinstance(raw, dict):
        raw = {**raw, **{field: os.environ[var] for var, field in ENV_OVERRIDES.items() if os.environ.get(var)}}
    return parse_config(raw, source=path.resolve())
