"""Policy document → ``Policy``: YAML with positions, JSON Schema, then typed objects.

``load_policy`` refuses a document that ``veil policy lint`` would reject (without the optional
tool-catalogue check), so what lints clean is exactly what loads, and a hot reload can never put
a broken policy in force.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from veil import yamlsafe
from veil.errors import PolicyError
from veil.policies.cel import Condition, ConditionError
from veil.policies.matching import ArgSet, GlobSet
from veil.policies.model import FlowRule, Policy, Rule
from veil.policies.schema import POLICY_SCHEMA
from veil.policies.substitution import SubstitutionRule
from veil.policies.yamlmarks import Located, load_yaml
from veil.tokenizer.settings import CustomPattern, DenyList, DetectionSettings, TokenSettings

_VALIDATOR = jsonschema.Draft202012Validator(POLICY_SCHEMA)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, order=True)
class Problem:
    """One finding, printed as ``file:line:col: message``."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def error(self) -> PolicyError:
        return PolicyError(self.message, file=self.file, line=self.line, column=self.column)


def problem(located: Located, file: str, path: tuple[Any, ...], message: str, *, key: bool = False) -> Problem:
    line, col = located.at(path, key=key)
    return Problem(file, line or 1, col or 1, message)


def _where(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the document"


def _message(err: jsonschema.ValidationError) -> str:
    """Schema errors in words that name the field and never echo long values."""
    where = _where(tuple(err.absolute_path))
    v = err.validator
    # The stubs type these as "maybe unset"; a ValidationError from a validator always has them.
    value: Any = err.validator_value
    schema: Any = err.schema
    if v == "type":
        expected = value if isinstance(value, str) else " or ".join(value)
        return (
            f"{where} must be {'an' if expected[0] in 'aeiou' else 'a'} {expected}, not {type(err.instance).__name__}"
        )
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f"{where} is missing the required field '{missing}'"
    if v == "enum":
        return f"{where} must be one of: {', '.join(map(str, value))}"
    if v == "const":
        return f"{where} must be {value!r}"
    if v == "pattern":
        return f"{where} does not have the expected form (pattern {value})"
    if v in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
        return f"{where} must be {v.replace('exclusiveM', 'above m').replace('imum', 'imum')} {value}"
    if v == "minItems":
        return f"{where} must have at least {value} item(s)"
    if v == "minLength":
        return f"{where} must not be empty"
    if v == "uniqueItems":
        return f"{where} lists the same item twice"
    if v == "oneOf":
        if schema.get("oneOf") and all("required" in s for s in schema["oneOf"]):
            keys = " or ".join(f"'{s['required'][0]}'" for s in schema["oneOf"])
            return f"{where} needs exactly one of {keys}"
        return f"{where} has an unexpected form: {schema.get('description', 'see `veil policy schema`')}"
    return f"{where}: {err.message[:200]}"


def schema_problems(located: Located, file: str) -> list[Problem]:
    out: list[Problem] = []
    for err in _VALIDATOR.iter_errors(located.data):
        path = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            for key in err.instance:
                if key not in allowed:
                    section = _where(path)
                    known = ", ".join(sorted(allowed))
                    out.append(
                        problem(
                            located,
                            file,
                            (*path, key),
                            f"unknown field '{key}' in {section} (known: {known})",
                            key=True,
                        )
                    )
            continue
        if err.validator == "propertyNames":
            for key in err.instance:
                if not re.match(r"^[A-Z][A-Z0-9_]*$", str(key)):
                    out.append(
                        problem(
                            located,
                            file,
                            (*path, key),
                            f"'{key}' in {_where(path)} is not an entity type name (UPPER_CASE)",
                            key=True,
                        )
                    )
            continue
        out.append(problem(located, file, path, _message(err)))
    return sorted(set(out))


def parse_duration(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return int(value[:-1]) * _UNITS[value[-1]]


def _globs(raw: Any) -> GlobSet | None:
    return None if raw is None else GlobSet(raw)


def _condition(raw: str | None, located: Located, file: str, path: tuple[Any, ...]) -> Condition | None:
    if raw is None:
        return None
    try:
        return Condition(raw)
    except ConditionError as exc:
        raise problem(located, file, path, f"{_where(path)}: {exc}").error() from None


def build_policy(located: Located, file: str, digest: str, path: Path) -> Policy:
    """Typed objects from a schema-valid document (raises ``PolicyError`` for what cannot compile)."""
    doc: dict[str, Any] = located.data
    det = doc.get("detection", {})
    patterns: list[CustomPattern] = []
    deny_lists: list[DenyList] = []
    for i, rec in enumerate(det.get("recognizers", [])):
        for j, pat in enumerate(rec.get("patterns", [])):
            try:
                re.compile(pat["regex"])
            except re.error as exc:
                where = ("detection", "recognizers", i, "patterns", j, "regex")
                raise problem(located, file, where, f"regex does not compile: {exc}").error() from None
            patterns.append(
                CustomPattern(
                    entity_type=rec["entity"],
                    regex=pat["regex"],
                    score=float(pat.get("score", 0.8)),
                    context=tuple(rec.get("context", ())),
                    validator=rec.get("validate", "none"),
                )
            )
        if "deny_list" in rec:
            deny_lists.append(DenyList(entity_type=rec["entity"], values=tuple(rec["deny_list"])))
    entities = tuple(det.get("entities", ()))
    if entities:  # custom and hinted types are always detected
        extra = [r["entity"] for r in det.get("recognizers", [])] + list(det.get("fields", {}).values())
        entities += tuple(dict.fromkeys(e for e in extra if e not in entities))
    detection_kwargs: dict[str, Any] = {
        "entities": entities,
        "exclude": tuple(det.get("exclude", ())),
        "language": det.get("language", "en"),
        "default_threshold": float(det.get("default_threshold", DetectionSettings.default_threshold)),
        "thresholds": {k: float(v) for k, v in det.get("thresholds", {}).items()},
        "patterns": tuple(patterns),
        "deny_lists": tuple(deny_lists),
        "field_hints": dict(det.get("fields", {})),
        "allow_values": tuple(det.get("allow", ())),
    }
    if "spacy_model" in det:
        detection_kwargs["spacy_model"] = det["spacy_model"]
    tok = doc.get("tokens", {})
    tokens = TokenSettings(scope=tok.get("scope", "session"), ttl_seconds=parse_duration(tok.get("ttl")))

    flows: list[FlowRule] = []
    for i, r in enumerate(doc.get("flows", [])):
        ents = r.get("entities", "*")
        flows.append(
            FlowRule(
                index=i,
                id=r["id"],
                effect=r["effect"],
                section="flows",
                tools=GlobSet(r["to"]),
                principals=_globs(r.get("principals")),
                roles=frozenset(r["roles"]) if "roles" in r else None,
                when=_condition(r.get("when"), located, file, ("flows", i, "when")),
                description=r.get("description"),
                line=located.at(("flows", i))[0],
                entities=None if ents == "*" or "*" in ents else frozenset(ents),
                sources=_globs(r.get("from")),
                args=ArgSet(r["args"]) if "args" in r else None,
            )
        )
    access: list[Rule] | None = None
    if "access" in doc:
        access = [
            Rule(
                index=i,
                id=r["id"],
                effect=r["effect"],
                section="access",
                tools=GlobSet(r.get("tools", ())),
                principals=_globs(r.get("principals")),
                roles=frozenset(r["roles"]) if "roles" in r else None,
                when=_condition(r.get("when"), located, file, ("access", i, "when")),
                description=r.get("description"),
                line=located.at(("access", i))[0],
                resources=_globs(r.get("resources")),
                prompts=_globs(r.get("prompts")),
                actions=frozenset(r["actions"]) if "actions" in r else None,
            )
            for i, r in enumerate(doc["access"] or [])
        ]
    substitution = [
        SubstitutionRule(
            index=i,
            id=r["id"],
            tools=GlobSet(r["to"]),
            args=ArgSet(r["args"]),
            context=r["substitute"],
            description=r.get("description"),
            line=located.at(("substitution", i))[0],
        )
        for i, r in enumerate(doc.get("substitution") or [])
    ]
    audit = {"retention_months": None, "record": [], **doc.get("audit", {})}
    metadata = {"purposes": [], **doc.get("metadata", {})}
    return Policy(
        version=digest,
        path=path,
        detection=DetectionSettings(**detection_kwargs),
        tokens=tokens,
        sandbox=dict(doc.get("sandbox", {})),
        audit=audit,
        metadata=metadata,
        flows=flows,
        access=access,
        raw=doc,
        substitution=substitution,
    )


def read_document(path: str | Path) -> tuple[bytes, Located, str]:
    """The file's bytes and its positioned YAML; ``PolicyError`` when unreadable or not YAML."""
    path = Path(path)
    file = str(path)
    try:
        data = yamlsafe.read_limited(path)
    except yamlsafe.YamlLimitError as exc:
        raise PolicyError(exc.message, file=file) from None
    except FileNotFoundError:
        raise PolicyError("policy file not found; check the 'policy' setting or the path given", file=file) from None
    except OSError as exc:
        raise PolicyError(f"cannot read policy file ({exc.strerror})", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy file is not UTF-8 text", file=file) from None
    try:
        yamlsafe.check(text)  # alias bombs, deep nesting: refused before anything expands them
    except yamlsafe.YamlLimitError as exc:
        raise PolicyError(exc.message, file=file, line=exc.line, column=exc.column) from None
    located = load_yaml(text, file)
    if not isinstance(located.data, dict):
        raise PolicyError(
            "a policy document must be a mapping (metadata:, detection:, flows: ...)", file=file, line=1, column=1
        )
    return data, located, file


def load_policy(path: str | Path) -> Policy:
    """Read, validate and compile a policy; the first error found raises ``PolicyError(file, line, column)``."""
    from veil.policies.lint import semantic_problems

    data, located, file = read_document(path)
    problems = schema_problems(located, file) or semantic_problems(located.data, located, file)
    if problems:
        raise problems[0].error()
    return build_policy(located, file, hashlib.sha256(data).hexdigest(), Path(path).resolve())
