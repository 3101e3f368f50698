"""render_stubs: valid Python with real signatures, safe docstrings and a readable index."""

from __future__ import annotations

import ast
import inspect
import types

from conftest import CATALOGUE

from veil.sandbox import ToolSpec, render_stubs
from veil.sandbox.stubs import py_name, signature, type_hint


def load(files: dict[str, str], path: str, calls: list) -> types.ModuleType:
    """Execute one generated module with a recording stand-in for the sandbox runtime."""
    runtime = types.ModuleType("_veil_runtime")
    runtime.call_tool = lambda upstream, tool, args: calls.append((upstream, tool, args)) or "ok"
    module = types.ModuleType("stub")
    import sys

    sys.modules["_veil_runtime"] = runtime
    try:
        exec(compile(files[path], path, "exec"), module.__dict__)
    finally:
        del sys.modules["_veil_runtime"]
    return module


def test_every_file_for_the_crm_catalogue_parses():
    files = render_stubs(CATALOGUE)
    assert {"servers/__init__.py", "servers/INDEX.md", "servers/crm/__init__.py", "servers/mailer/__init__.py"} <= set(
        files
    )
    assert "servers/crm/find_customers.py" in files
    for path, text in files.items():
        if path.endswith(".py"):
            ast.parse(text, path)
    assert "`crm.get_customer(customer_id: str) -> dict[str, Any]`" in files["servers/INDEX.md"]


def test_signature_required_defaults_and_types():
    spec = ToolSpec(
        "crm",
        "search",
        "Search.",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer", "default": 10},
                "tags": {"type": "array", "items": {"type": "string"}},
                "mode": {"enum": ["a", "b"]},
                "from": {"type": ["string", "null"]},
                "user-id": {"type": "number"},
            },
            "required": ["query"],
        },
    )
    assert signature(spec) == (
        "search(query: str, *, limit: int = 10, tags: list[str] | None = None, mode: Literal['a', 'b'] | None = None, "
        "from_: str | None = None, user_id: float | None = None) -> Any"
    )
    calls: list = []
    module = load({"m": __import__("veil.sandbox.stubs", fromlist=["render_tool"]).render_tool(spec)}, "m", calls)
    params = inspect.signature(module.search).parameters
    assert params["query"].default is inspect.Parameter.empty
    assert params["limit"].default == 10
    module.search("[PERSON_1]", from_="x", user_id=3.5)
    assert calls == [("crm", "search", {"query": "[PERSON_1]", "limit": 10, "from": "x", "user-id": 3.5})]


def test_hostile_descriptions_cannot_break_out_of_the_docstring():
    spec = ToolSpec(
        "crm", "evil", 'Ends here """\nimport os; os.system("x")\n"""\\', {"type": "object", "properties": {}}
    )
    text = render_stubs([spec])["servers/crm/evil.py"]
    tree = ast.parse(text)
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    assert 'os.system("x")' in ast.get_docstring(func)
    assert not any(isinstance(n, ast.Import) and n.names[0].name == "os" for n in ast.walk(tree))


def test_names_become_identifiers():
    assert py_name("class") == "class_"
    assert py_name("2fa-code") == "_2fa_code"
    assert py_name("a", {"a"}) == "a_2"
    assert type_hint({"anyOf": [{"type": "integer"}, {"type": "null"}]}) == "int | None"
    assert type_hint({"$ref": "#/$defs/Customer"}) == "dict[str, Any]"
    assert type_hint({"type": "object"}) == "dict[str, Any]"
    assert type_hint(None) == "Any"
