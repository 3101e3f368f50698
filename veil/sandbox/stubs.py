"""Generate the ``servers/`` Python API the sandboxed code imports.

``render_stubs(catalogue)`` returns ``{relative path: source text}``: one package per upstream
(``servers/crm/__init__.py``), one module per tool (``servers/crm/find_customers.py``) with a real
signature (JSON Schema types as hints, schema defaults as defaults, required parameters without a
default), the tool's description as docstring, and ``servers/INDEX.md`` listing everything. The
same files are written into the sandbox (so code can list, read and ``help()`` them) and can be
served by the gateway as MCP resources.

The functions call ``_veil_runtime.call_tool``, the channel client the sandbox runtime installs;
nothing else in the files needs the runtime, so they read as plain documentation too.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import re
from collections.abc import Iterable
from typing import Any

from veil.sandbox.spec import ToolSpec

_SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
_NOT_IDENT = re.compile(r"[^0-9a-zA-Z_]")


def py_name(name: str, taken: Iterable[str] = ()) -> str:
    """A valid, non-keyword Python identifier for a schema or tool name (``user-id`` -> ``user_id``)."""
    ident = _NOT_IDENT.sub("_", name) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident) or ident in {"servers", "ToolError"}:
        ident += "_"
    taken = set(taken)
    base, n = ident, 2
    while ident in taken:
        ident, n = f"{base}_{n}", n + 1
    return ident


def type_hint(schema: Any, depth: int = 0) -> str:
    """A readable Python type hint for a JSON Schema (best effort; unknown shapes are ``Any``)."""
    if not isinstance(schema, dict) or depth > 4:
        return "Any"
    if isinstance(schema.get("$ref"), str):
        return "dict[str, Any]"  # $defs in MCP tool schemas are (pydantic) object models
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        values = [v for v in schema["enum"] if isinstance(v, str | int | bool) or v is None]
        if values and len(values) == len(schema["enum"]):
            return "Literal[" + ", ".join(repr(v) for v in values) + "]"
    if "const" in schema and isinstance(schema["const"], str | int | bool):
        return f"Literal[{schema['const']!r}]"
    for combo in ("anyOf", "oneOf"):
        if isinstance(schema.get(combo), list):
            return _union(type_hint(s, depth + 1) for s in schema[combo])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union(type_hint({**schema, "type": k}, depth + 1) for k in kind)
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        return f"list[{type_hint(schema.get('items'), depth + 1)}]"
    if kind == "object":
        return "dict[str, Any]"
    return "Any"


def _union(hints: Iterable[str]) -> str:
    parts: list[str] = []
    for hint in hints:
        if hint == "Any":
            return "Any"
        if hint not in parts:
            parts.append(hint)
    return " | ".join(parts) if parts else "Any"


def _doc_literal(text: str, indent: str) -> str:
    """A triple-quoted docstring that cannot be closed early by the text inside it."""
    safe = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"').rstrip()
    if safe.endswith('"'):
        safe += " "
    lines = safe.splitlines() or [""]
    body = "\n".join((indent + line) if line.strip() else "" for line in lines[1:])
    return f'{indent}"""{lines[0]}' + (f"\n{body}\n{indent}" if body else "") + '"""'


def _short(text: str, limit: int = 100) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def _params(spec: ToolSpec) -> list[tuple[str, str, dict[str, Any], bool]]:
    """(python name, JSON name, property schema, required) in signature order."""
    schema = spec.input_schema if isinstance(spec.input_schema, dict) else {}
    raw_props = schema.get("properties")
    props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
    required = set(schema.get("required") or []) & set(props)
    ordered = [n for n in props if n in required] + [n for n in props if n not in required]
    out: list[tuple[str, str, dict[str, Any], bool]] = []
    taken: set[str] = set()
    for json_name in ordered:
        ident = py_name(json_name, taken)
        taken.add(ident)
        prop = props[json_name] if isinstance(props[json_name], dict) else {}
        out.append((ident, json_name, prop, json_name in required))
    return out


def _default_literal(value: Any) -> str | None:
    """The default as Python source, or None when it cannot be written safely."""
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return repr(value) if isinstance(value, list | dict) and len(repr(value)) < 200 else None


def signature(spec: ToolSpec) -> str:
    """``find_customers(*, segment: str | None = None, limit: int = 20) -> Any``."""
    required_parts, optional_parts = [], []
    for ident, _json_name, prop, required in _params(spec):
        hint = type_hint(prop)
        if required:
            required_parts.append(f"{ident}: {hint}")
            continue
        default = _default_literal(prop.get("default")) if "default" in prop else None
        if default is None or default == "None":
            hint = hint if hint in {"Any", "None"} or hint.endswith("| None") else f"{hint} | None"
            default = "None"
        optional_parts.append(f"{ident}: {hint} = {default}")
    parts = required_parts + (["*", *optional_parts] if optional_parts else [])
    return f"{py_name(spec.name)}({', '.join(parts)}) -> {_return_hint(spec)}"


def _returned_schema(spec: ToolSpec) -> dict[str, Any] | None:
    """The schema of what the function returns. The gateway unwraps FastMCP's ``{"result": X}``
    envelope for non-object results, so such a tool returns X itself."""
    out = spec.output_schema
    if not isinstance(out, dict):
        return None
    props = out.get("properties")
    if isinstance(props, dict) and set(props) == {"result"} and isinstance(props["result"], dict):
        return props["result"]
    return out


def _resolve(schema: Any, root: dict[str, Any] | None) -> Any:
    """Follow a local ``#/$defs/Name`` reference (one level) so docstrings can list keys."""
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and root:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = (root.get("$defs") or {}).get(name)
        if isinstance(target, dict):
            return target
    return schema


def _return_hint(spec: ToolSpec) -> str:
    returned = _returned_schema(spec)
    return type_hint(returned) if returned is not None else "Any"


def _docstring(spec: ToolSpec) -> str:
    lines = [spec.description.strip() or f"Tool {spec.name} of upstream {spec.upstream}."]
    params = _params(spec)
    if params:
        lines += ["", "Parameters:"]
        for ident, json_name, prop, required in params:
            note = "" if ident == json_name else f" (sent as {json_name!r})"
            text = _short(str(prop.get("description", "")), 200)
            flag = "required" if required else "optional"
            lines.append(f"    {ident} ({type_hint(prop)}, {flag}){note}: {text}".rstrip(": "))
    lines += ["", "Returns:"]
    returned = _returned_schema(spec)
    shape = _resolve(returned, spec.output_schema)
    prefix = "A dict"
    if isinstance(shape, dict) and shape.get("type") == "array":
        shape, prefix = _resolve(shape.get("items"), spec.output_schema), "A list of dicts, each"
    if isinstance(shape, dict) and isinstance(shape.get("properties"), dict):
        lines.append(f"    {prefix} with keys:")
        for key, prop in shape["properties"].items():
            prop = _resolve(prop, spec.output_schema)
            desc = _short(str(prop.get("description", "")), 120) if isinstance(prop, dict) else ""
            lines.append(f"        {key} ({type_hint(prop)}){': ' + desc if desc else ''}")
    elif returned is not None:
        lines.append(f"    {type_hint(returned)}")
    else:
        lines.append("    The tool's structured result as Python objects (dict/list), or its text as str.")
    lines += [
        "",
        "Raises:",
        "    servers.ToolError: the upstream or the gateway refused or failed the call.",
        "",
        "Personal data in results is replaced by tokens such as [EMAIL_ADDRESS_3]; pass tokens on",
        "unchanged (also inside f-strings) and the gateway restores the real values upstream.",
    ]
    return "\n".join(lines)


def render_tool(spec: ToolSpec) -> str:
    """The source of ``servers/<upstream>/<tool>.py``."""
    func = py_name(spec.name)
    params = _params(spec)
    pairs = ", ".join(f"({json_name!r}, {ident})" for ident, json_name, _p, _r in params)
    optional = {json_name for _i, json_name, _p, required in params if not required}
    header = f"Generated by Veil: {spec.upstream}.{func} -- {_short(spec.description, 80) or 'upstream tool'}"
    return (
        f"{_doc_literal(header, '')}\n\n"
        "from typing import Any, Literal  # noqa: F401\n\n"
        "from _veil_runtime import call_tool as _veil_call\n\n"
        f"_OPTIONAL = {sorted(optional)!r}\n\n\n"
        f"def {signature(spec)}:\n"
        f"{_doc_literal(_docstring(spec), '    ')}\n"
        f"    _given = [{pairs}]\n"
        "    _sent = {k: v for k, v in _given if not (v is None and k in _OPTIONAL)}\n"
        f"    return _veil_call({spec.upstream!r}, {spec.name!r}, _sent)\n"
    )


def _by_upstream(catalogue: Iterable[ToolSpec]) -> dict[str, list[ToolSpec]]:
    grouped: dict[str, list[ToolSpec]] = {}
    for spec in catalogue:
        grouped.setdefault(spec.upstream, []).append(spec)
    return {name: sorted(specs, key=lambda s: s.name) for name, specs in sorted(grouped.items())}


def render_stubs(catalogue: Iterable[ToolSpec]) -> dict[str, str]:
    """All generated files of the ``servers`` package, keyed by path relative to the workspace."""
    grouped = _by_upstream(catalogue)
    files: dict[str, str] = {}
    modules = {upstream: py_name(upstream) for upstream in grouped}
    index = [
        "# servers: the upstream tools, as Python",
        "",
        "```python",
        "from servers import " + (", ".join(modules.values()) or "<upstream>"),
        "```",
        "",
        "Call a tool as a function with keyword arguments; structured results come back as dicts and",
        "lists, text results as str; a failed call raises `servers.ToolError`. `help(module.tool)` shows",
        "a tool's parameters. Personal data appears as tokens like `[EMAIL_ADDRESS_3]`: pass them on",
        "unchanged. Filter large results here and print only what you need.",
        "",
    ]
    for upstream, specs in grouped.items():
        module = modules[upstream]
        taken: set[str] = set()
        entries = []
        for spec in specs:
            func = py_name(spec.name, taken)
            taken.add(func)
            if func != py_name(spec.name):
                spec = ToolSpec(spec.upstream, func, spec.description, spec.input_schema, spec.output_schema)
            files[f"servers/{module}/{func}.py"] = render_tool(spec)
            entries.append((func, spec))
        imports = "\n".join(f"from servers.{module}.{func} import {func}" for func, _ in entries)
        names = ", ".join(repr(func) for func, _ in entries)
        doc = f"Tools of upstream '{upstream}': " + ", ".join(func for func, _ in entries) + "."
        files[f"servers/{module}/__init__.py"] = f"{_doc_literal(doc, '')}\n\n{imports}\n\n__all__ = [{names}]\n"
        index.append(f"## {module}")
        index.append("")
        for _func, spec in entries:
            index.append(f"- `{module}.{signature(spec)}`: {_short(spec.description)}")
        index.append("")
    upstream_list = ", ".join(modules.values()) or "(none)"
    files["servers/__init__.py"] = (
        f'"""Generated by Veil: one module per upstream ({upstream_list}). See servers/INDEX.md."""\n\n'
        "from _veil_runtime import ToolError\n\n"
        f"__all__ = ['ToolError', {', '.join(repr(m) for m in modules.values())}]\n"
    )
    files["servers/INDEX.md"] = "\n".join(index)
    return files


def stubs_digest(files: dict[str, str]) -> str:
    """A fingerprint of a rendered tree, so a sandbox only rewrites stubs when they changed."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
