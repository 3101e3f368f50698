"""The JSON Schema of a policy document: the published contract security staff write against.

``veil policy schema`` prints it, editors can validate against it, and ``load_policy`` checks every
document with it before anything else, so a typo in a field name is an error with a line number
rather than a silently ignored setting. Everything the schema cannot express (regexes compile, CEL
compiles, entity types exist, rules are reachable) is checked by ``veil.policies.lint``.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_ID = "https://veil.dev/schemas/policy-1.json"

ENTITY_NAME = {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"}
RULE_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
GLOBS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}}
DURATION = {
    "description": "Seconds as an integer, or a duration such as '90s', '15m', '12h', '30d', '2w'; null: no expiry.",
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": "^[1-9][0-9]*[smhdw]$"},
        {"type": "null"},
    ],
}
EFFECT = {"type": "string", "enum": ["allow", "deny"]}

_PATTERN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["regex"],
    "properties": {
        "name": {"type": "string"},
        "regex": {"type": "string", "minLength": 1},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

_RECOGNIZER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["entity"],
    "oneOf": [{"required": ["patterns"]}, {"required": ["deny_list"]}],
    "properties": {
        "name": {"type": "string"},
        "entity": ENTITY_NAME,
        "patterns": {"type": "array", "minItems": 1, "items": _PATTERN},
        "deny_list": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "context": NAMES,
        "validate": {"type": "string", "enum": ["luhn", "iban", "none"]},
    },
}

_CONDITION = {
    "type": "string",
    "minLength": 1,
    "description": "A CEL expression over principal.*, destination.*, token.* (flows only) and now.",
}

_FLOW_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "to", "effect"],
    "properties": {
        "id": RULE_ID,
        "description": {"type": "string"},
        "entities": {
            "description": "Entity types the rule is about; '*' (or absent) means every type.",
            "oneOf": [{"type": "string", "const": "*"}, {"type": "array", "minItems": 1, "items": ENTITY_NAME}],
        },
        "from": {**GLOBS, "description": "Globs on the upstream(s) the value was seen coming from."},
        "to": {**GLOBS, "description": "Globs on the destination tool, written UPSTREAM__TOOL."},
        "args": {**GLOBS, "description": "Argument paths such as 'to', 'recipients[*]', 'customer.email'."},
        "principals": {**GLOBS, "description": "Globs on the principal's name."},
        "roles": {**GLOBS, "description": "The principal must hold at least one of these roles."},
        "when": _CONDITION,
        "effect": EFFECT,
    },
}

_ACCESS_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "effect"],
    "anyOf": [{"required": ["tools"]}, {"required": ["resources"]}, {"required": ["prompts"]}],
    "properties": {
        "id": RULE_ID,
        "description": {"type": "string"},
        "tools": {
            **GLOBS,
            "description": "Globs on UPSTREAM__TOOL; Veil's own tools are veil__execute_code and veil__search_tools.",
        },
        "resources": {**GLOBS, "description": "Globs on UPSTREAM:URI (templates match by their template text)."},
        "prompts": {**GLOBS, "description": "Globs on UPSTREAM__PROMPT."},
        "actions": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string", "enum": ["call", "read", "subscribe", "get", "complete"]},
            "description": "What the rule covers (tools: call; resources: read, subscribe, complete; "
            "prompts: get, complete); absent: every action.",
        },
        "principals": {**GLOBS, "description": "Globs on the principal's name."},
        "roles": {**GLOBS, "description": "The principal must hold at least one of these roles."},
        "when": _CONDITION,
        "effect": EFFECT,
    },
}

_SUBSTITUTION_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "to", "args", "substitute"],
    "properties": {
        "id": RULE_ID,
        "description": {"type": "string"},
        "to": {**GLOBS, "description": "Globs on the destination tool, written UPSTREAM__TOOL."},
        "args": {**GLOBS, "description": "Argument paths such as 'sql', 'query', 'payload.filter'."},
        "substitute": {
            "type": "string",
            "enum": ["sql", "json", "shell", "raw"],
            "description": "How real values are written into the argument: escaped for a PostgreSQL string "
            "literal, as JSON strings, quoted for a shell, or verbatim.",
        },
    },
}

POLICY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "Veil policy document",
    "type": "object",
    "additionalProperties": False,
    "required": ["metadata"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["name"],
            "description": "Who owns the policy and why data is processed (feeds the GDPR Art. 30 export).",
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "owner": {"type": "string"},
                "description": {"type": "string"},
                "controller": {"type": "string"},
                "contact": {"type": "string"},
                "purposes": NAMES,
                "data_subjects": NAMES,
                "data_categories": NAMES,
                "recipients": NAMES,
                "transfers": NAMES,
            },
            "additionalProperties": {"oneOf": [{"type": "string"}, NAMES]},
        },
        "detection": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "language": {"type": "string", "pattern": "^[a-z]{2}$"},
                "entities": {"type": "array", "items": ENTITY_NAME, "uniqueItems": True},
                "exclude": {
                    "type": "array",
                    "items": ENTITY_NAME,
                    "uniqueItems": True,
                    "description": "Types never tokenised, not even under a key that implies them.",
                },
                "default_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                "thresholds": {
                    "type": "object",
                    "propertyNames": {"pattern": "^[A-Z][A-Z0-9_]*$"},
                    "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "recognizers": {"type": "array", "items": _RECOGNIZER},
                "fields": {
                    "type": "object",
                    "description": "JSON key hints: key glob or dotted path -> entity type.",
                    "additionalProperties": ENTITY_NAME,
                },
                "allow": {**NAMES, "description": "Values never treated as PII."},
                "spacy_model": {"type": "string", "minLength": 1},
            },
        },
        "tokens": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "scope": {"type": "string", "enum": ["session", "principal", "tenant"]},
                "ttl": DURATION,
            },
        },
        "flows": {"type": "array", "items": _FLOW_RULE},
        "access": {"type": "array", "items": _ACCESS_RULE},
        "substitution": {
            "type": "array",
            "items": _SUBSTITUTION_RULE,
            "description": "How values are written into tool arguments; default: sql for arguments named "
            "sql, query or statement, raw for the rest.",
        },
        "sandbox": {
            "type": "object",
            "additionalProperties": False,
            "description": "Overrides for the gateway's SandboxConfig limits.",
            "properties": {
                "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "memory_mb": {"type": "integer", "minimum": 16},
                "cpu_s": {"type": "integer", "minimum": 1},
                "max_processes": {"type": "integer", "minimum": 1},
                "max_output_bytes": {"type": "integer", "minimum": 1},
                "max_file_mb": {"type": "integer", "minimum": 1},
                "workspace_mb": {"type": "integer", "minimum": 8},
                "max_open_files": {"type": "integer", "minimum": 16},
            },
        },
        "audit": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "retention_months": {"type": "integer", "minimum": 1},
                "record": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {"type": "string", "enum": ["detection_details", "rule_trace", "allowed_flows"]},
                },
            },
        },
    },
}


def schema_json() -> str:
    """The schema as pretty JSON, byte-stable across runs (what ``veil policy schema`` prints)."""
    return json.dumps(POLICY_SCHEMA, indent=2, sort_keys=False) + "\n"
