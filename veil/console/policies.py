"""Policies in the browser: the version in force and its history, an editor that validates and
lints as ``veil policy lint`` does, a diff against the policy in force, a try-it pane, and roll-out.

A draft is checked by writing it to a private temporary directory and running the same loader
and lint as the CLI (messages carry their line and column). Roll-out (``security`` role only)
writes the policy file atomically; the gateway's watcher loads it within about a second and
records ``policy.load``; the console records ``policy.rollout`` with who, and the old and new
SHA-256. The try-it pane runs the tokenizer's detection and the policy's decisions on a pasted
sample; the sample is not kept or logged, and comes back only as the agent would see it
(detected values replaced by their tokens), next to the entity types, spans and tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from starlette.responses import Response
from starlette.routing import Route

from veil.audit import events as ev
from veil.console.services import ROLLOUT_ROLES
from veil.errors import PolicyError
from veil.policies.loader import Problem

MAX_POLICY = 512 * 1024
MAX_SAMPLE = 64 * 1024


def _draft(form: Any) -> str:
    text = str(form.get("policy", ""))
    if not text.strip():
        raise ValueError("the policy text is empty")
    if len(text.encode()) > MAX_POLICY:
        raise ValueError(f"a policy is at most {MAX_POLICY // 1024} KiB")
    return text.replace("\r\n", "\n")


def _with_file(text: str, name: str, fn: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="veil-console-") as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        return fn(path)


def check(services: Any, text: str) -> dict[str, Any]:
    """Lint problems (line, column, message), and when the draft loads, its diff against the file in force."""
    from veil.policies import load_policy
    from veil.policies.diff import diff_policies
    from veil.policies.lint import lint_file

    def run(path: Path) -> dict[str, Any]:
        problems: list[Problem] = lint_file(str(path), upstreams=services.upstreams or None)
        out: dict[str, Any] = {"problems": [(p.line, p.column, p.message) for p in problems], "diff": None}
        if not problems:
            try:
                new = load_policy(path)
                out["version"] = new.version
                out["diff"] = diff_policies(load_policy(services.policy_path), new)
            except PolicyError as exc:
                out["problems"] = [(exc.line or 1, exc.column or 1, exc.detail)]
        return out

    return _with_file(text, services.policy_path.name, run)


def history(services: Any) -> list[dict[str, Any]]:
    with services.engine.connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "SELECT seq, ts, kind, outcome, principal, policy_version, detail FROM audit_events "
                    "WHERE kind IN (:load, :rejected, :rollout) ORDER BY seq DESC LIMIT 50"
                ),
                {"load": ev.POLICY_LOAD, "rejected": ev.POLICY_REJECTED, "rollout": ev.POLICY_ROLLOUT},
            ).mappings()
        ]
    # Who put a version in force: the console user whose roll-out wrote it (loads are by "veil").
    authors = {r["detail"].get("new_version"): r["principal"] for r in reversed(rows) if r["kind"] == ev.POLICY_ROLLOUT}
    for r in rows:
        r["version"] = r["detail"].get("new_version") if r["kind"] == ev.POLICY_ROLLOUT else r["policy_version"]
        r["by"] = r["principal"] if r["kind"] == ev.POLICY_ROLLOUT else authors.get(r["version"], "")
    return rows


async def overview(c: Any, ctx: Any) -> Response:
    services = c.services

    def load() -> dict[str, Any]:
        from veil.policies import load_policy

        data = services.policy_path.read_bytes()
        try:
            policy = load_policy(services.policy_path)
            name, problem = policy.name, ""
        except PolicyError as exc:
            name, problem = "", str(exc)
        rows = history(services)
        in_force = next((r for r in rows if r["kind"] == ev.POLICY_LOAD), None)
        return {
            "file_version": hashlib.sha256(data).hexdigest(),
            "name": name,
            "problem": problem,
            "history": rows,
            "in_force": in_force,
        }

    info = await anyio.to_thread.run_sync(load)
    return c.render(ctx, "policies.html", nav="policies", path=str(services.policy_path), **info)


def _editor_page(
    c: Any,
    ctx: Any,
    text: str | None,
    status: int = 200,
    *,
    result: dict[str, Any] | None = None,
    trial: dict[str, Any] | None = None,
    message: str = "",
    **extra: Any,
) -> Response:
    """The editor page in one of its states: as loaded, checked, rolled out (or refused), tried."""
    return c.render(
        ctx,
        "policy_edit.html",
        status,
        nav="policies",
        text=text,
        result=result,
        trial=trial,
        message=message,
        upstreams=c.services.upstreams,
        **extra,
    )


async def editor(c: Any, ctx: Any) -> Response:
    text = await anyio.to_thread.run_sync(lambda: c.services.policy_path.read_text(encoding="utf-8"))
    return _editor_page(c, ctx, text)


async def check_view(c: Any, ctx: Any) -> Response:
    text = _draft(ctx.form)
    result = await anyio.to_thread.run_sync(check, c.services, text)
    ctx.detail = {
        "action": "check",
        "problems": len(result["problems"]),
        "draft_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    return _editor_page(c, ctx, text, result=result)


async def rollout(c: Any, ctx: Any) -> Response:
    text = _draft(ctx.form)
    services = c.services
    result = await anyio.to_thread.run_sync(check, services, text)
    new_version = hashlib.sha256(text.encode()).hexdigest()
    if result["problems"]:
        ctx.detail = {"action": "rollout", "refused": "lint", "problems": len(result["problems"])}
        return _editor_page(c, ctx, text, 409, result=result, message="not rolled out: fix the problems first")
    old_version = await anyio.to_thread.run_sync(_write, services.policy_path, text)
    ctx.kind = ev.POLICY_ROLLOUT
    ctx.detail = {"path": str(services.policy_path), "old_version": old_version, "new_version": new_version}
    return _editor_page(
        c,
        ctx,
        text,
        result=result,
        message=f"rolled out: version {new_version[:12]} written to {services.policy_path.name}; "
        "the gateway loads it within about a second",
    )


def _write(path: Path, text: str) -> str:
    """Replace the policy file atomically (same directory, same mode); returns the old SHA-256."""
    old = hashlib.sha256(path.read_bytes()).hexdigest()
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return old


def trial(services: Any, text: str | None, form: Any) -> dict[str, Any]:
    """Detection, tokens and flow decisions for a pasted sample; never returns the sample's values."""
    from veil.policies import load_policy
    from veil.policies.detection import make_detector
    from veil.policies.explain import explain_call, split_tool
    from veil.principal import Principal

    sample = str(form.get("sample", ""))
    if not sample.strip():
        raise ValueError("paste a sample tool result or arguments (text or JSON)")
    if len(sample) > MAX_SAMPLE:
        raise ValueError(f"a sample is at most {MAX_SAMPLE // 1024} KiB")
    destination = str(form.get("destination", "")).strip()
    if destination:
        split_tool(destination)  # ValueError names the expected form
    policy = _with_file(text, services.policy_path.name, load_policy) if text else load_policy(services.policy_path)
    detector = make_detector(policy.detection)
    if isinstance(detector, str):
        raise ValueError(detector)
    try:
        value: Any = json.loads(sample)
    except json.JSONDecodeError:
        value = sample
    findings = detector.explain(value)
    numbers: dict[str, dict[str, int]] = {}
    rows = []
    for f in findings:
        seen = numbers.setdefault(f.entity_type, {})
        token = f"[{f.entity_type}_{seen.setdefault(f.text, len(seen) + 1)}]"
        rows.append(
            {
                "path": f.path,
                "start": f.start,
                "end": f.end,
                "type": f.entity_type,
                "score": f.score,
                "recognizer": f.recognizer,
                "token": token,
            }
        )
    # The sample as the agent would see it: every detected value replaced by its token.
    shown = sample if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    for f in sorted(findings, key=lambda f: -len(f.text)):
        if f.text:
            shown = shown.replace(f.text, f"[{f.entity_type}_{numbers[f.entity_type][f.text]}]")
    explanation = ""
    if destination:
        roles = frozenset(r.strip() for r in str(form.get("roles", "")).split(",") if r.strip())
        principal = Principal(
            str(form.get("principal", "")).strip() or "agent", roles, str(form.get("tenant", "")).strip() or None
        )
        argument = str(form.get("argument", "")).strip() or "value"
        tokens = sorted({r["token"] for r in rows})
        source = str(form.get("source", "")).strip()
        call = f"{destination} {json.dumps({argument: ' '.join(tokens)})}"
        explanation = explain_call(policy, call, principal, frozenset({source}) if source else frozenset())
    return {"findings": rows, "shown": shown, "explanation": explanation, "policy": policy.name, "draft": bool(text)}


async def try_view(c: Any, ctx: Any) -> Response:
    text = str(ctx.form.get("policy", "")) or None
    result = await anyio.to_thread.run_sync(trial, c.services, text.replace("\r\n", "\n") if text else None, ctx.form)
    ctx.detail = {"action": "try", "entities": len(result["findings"])}
    if text is None:
        text = await anyio.to_thread.run_sync(lambda: c.services.policy_path.read_text(encoding="utf-8"))
    tried = {k: str(ctx.form.get(k, "")) for k in ("principal", "roles", "tenant", "source", "destination", "argument")}
    return _editor_page(c, ctx, text, trial=result, tried=tried)


def routes(c: Any) -> list[Route]:
    return [
        Route("/policies", c.page("policies", overview)),
        Route("/policies/edit", c.page("policies.edit", editor), methods=["GET"]),
        Route("/policies/check", c.page("policies.check", check_view), methods=["POST"]),
        Route("/policies/try", c.page("policies.try", try_view), methods=["POST"]),
        Route("/policies/rollout", c.page("policies.rollout", rollout, roles=ROLLOUT_ROLES), methods=["POST"]),
    ]
