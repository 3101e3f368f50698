"""The parsed policy and its decisions.

Rules are evaluated in document order and the **first rule that matches decides** (allow or deny).
A rule matches when every field it sets matches: entity type, source upstream, destination tool,
argument path, principal name, role, and finally its ``when`` condition. A rule whose condition
cannot be evaluated decides *deny* (fail closed).

When no flow rule matches, the built-in fallback applies: a value may go back to the upstream it
came from (``default:same-upstream``), anywhere else is refused (``default:deny``). When the policy
has no ``access`` section every principal may use everything (``default:allow-all``); with one,
anything no rule allows is refused (``default:deny``).

Access rules name what they cover by kind: ``tools`` (globs on ``UPSTREAM__TOOL``), ``resources``
(globs on ``UPSTREAM:URI``; a template is matched by its template text) and ``prompts`` (globs on
``UPSTREAM__PROMPT``), optionally narrowed to ``actions`` (tools: ``call``; resources: ``read``,
``subscribe``, ``complete``; prompts: ``get``, ``complete``). A rule applies to a kind only if it
names patterns for it, so a ``tools: ["*"]`` rule never opens resources or prompts.

Every evaluation can return its trace — each rule considered, in order, and why it did or did not
match — which is what ``veil policy explain`` prints and what audit records on request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from veil.policies.cel import Condition, ConditionError, activation
from veil.policies.matching import ArgSet, GlobSet, normalise_arg_path
from veil.policies.substitution import SubstitutionRule, substitution_context
from veil.tokenizer.settings import DetectionSettings, TokenSettings

EXECUTE_UPSTREAM = "veil"
EXECUTE_TOOL = "execute_code"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str  # rule id, e.g. "flows[2]:crm-email-to-mailer" or "default:same-upstream"
    reason: str  # a sentence a person can read


@dataclass(frozen=True)
class Step:
    """One rule considered during an evaluation."""

    rule: str
    matched: bool
    reason: str


class PrincipalLike(Protocol):  # read-only members: frozen dataclasses (Principal) satisfy it
    @property
    def name(self) -> str: ...
    @property
    def roles(self) -> frozenset[str]: ...
    @property
    def tenant(self) -> str | None: ...


class TokenLike(Protocol):  # read-only members: TokenRef (frozen) satisfies it
    @property
    def token(self) -> str: ...
    @property
    def entity_type(self) -> str: ...
    @property
    def sources(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class Rule:
    """Fields shared by flow and access rules; ``None`` means the field is not set (matches all)."""

    index: int
    id: str
    effect: str  # "allow" | "deny"
    section: str  # "flows" | "access"
    tools: GlobSet
    principals: GlobSet | None = None
    roles: frozenset[str] | None = None
    when: Condition | None = None
    description: str | None = None
    line: int | None = None
    resources: GlobSet | None = None  # access rules: globs on UPSTREAM:URI
    prompts: GlobSet | None = None  # access rules: globs on UPSTREAM__PROMPT
    actions: frozenset[str] | None = None  # access rules: None means every action

    def globs(self, kind: str) -> GlobSet | None:
        """The rule's patterns for a kind of access target (tool, resource, prompt)."""
        return {"tool": self.tools, "resource": self.resources, "prompt": self.prompts}[kind]

    @property
    def ref(self) -> str:
        return f"{self.section}[{self.index}]:{self.id}"


@dataclass(frozen=True)
class FlowRule(Rule):
    entities: frozenset[str] | None = None
    sources: GlobSet | None = None
    args: ArgSet | None = None


def _who(rule: Rule, principal: PrincipalLike) -> str | None:
    """Why the rule does not apply to this principal, or None when it does."""
    if rule.principals is not None and not rule.principals.matches(principal.name):
        return f"principal '{principal.name}' is not one of [{rule.principals}]"
    if rule.roles is not None and not (rule.roles & set(principal.roles)):
        held = ", ".join(sorted(principal.roles)) or "none"
        return f"principal holds none of the roles [{', '.join(sorted(rule.roles))}] (has: {held})"
    return None


def _who_miss(rule: Rule, principal: PrincipalLike) -> bool:
    return (rule.principals is not None and not rule.principals.matches(principal.name)) or (
        rule.roles is not None and rule.roles.isdisjoint(principal.roles)
    )


def _flow_miss(
    rule: FlowRule, etype: str, sources: list[str], dest: str, arg_path: str, principal: PrincipalLike
) -> bool:
    """The cheap part of matching, without building reasons: True when the rule cannot match."""
    return (
        (rule.entities is not None and etype not in rule.entities)
        or (rule.sources is not None and not any(rule.sources.matches(s) for s in sources))
        or not rule.tools.matches(dest)
        or (rule.args is not None and not rule.args.matches(arg_path))
        or _who_miss(rule, principal)
    )


def _condition(rule: Rule, act: dict[str, Any]) -> tuple[bool | None, str]:
    """(True|False, why) or (None, error) when the condition could not be evaluated."""
    assert rule.when is not None
    try:
        ok = rule.when.evaluate(act)
    except ConditionError as exc:
        return None, str(exc)
    return ok, f"condition {'true' if ok else 'false'}: {rule.when.source}"


@dataclass
class Policy:
    """A loaded, validated policy document. Immutable in practice: reload builds a new one."""

    version: str  # sha256 of the document's bytes, hex
    path: Path
    detection: DetectionSettings
    tokens: TokenSettings
    sandbox: dict[str, Any]
    audit: dict[str, Any]
    metadata: dict[str, Any]
    flows: list[FlowRule]
    access: list[Rule] | None  # None: no access section (everyone may do everything)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    substitution: list[SubstitutionRule] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.path.stem))

    def substitute_context(self, upstream: str, tool: str, arg_path: str) -> tuple[str, str]:
        """How real values are written into ``arg_path`` of ``upstream__tool`` (``sql``, ``json``,
        ``shell``, ``raw``) and the rule that says so (``substitution[N]:ID`` or ``default:…``)."""
        return substitution_context(self.substitution, upstream, tool, arg_path)

    # -- flows ---------------------------------------------------------------------------------

    def decide_flow(
        self,
        principal: PrincipalLike,
        ref: TokenLike,
        upstream: str,
        tool: str,
        arg_path: str,
        *,
        now: datetime | None = None,
    ) -> Decision:
        """May the real value behind ``ref`` be sent to ``upstream__tool`` in argument ``arg_path``?"""
        return self.explain_flow(principal, ref, upstream, tool, arg_path, now=now, trace=False)[0]

    def explain_flow(
        self,
        principal: PrincipalLike,
        ref: TokenLike,
        upstream: str,
        tool: str,
        arg_path: str,
        *,
        now: datetime | None = None,
        trace: bool = True,
    ) -> tuple[Decision, list[Step]]:
        """The decision and, with ``trace``, why each rule did or did not match (explain, audit)."""
        dest = f"{upstream}__{tool}"
        arg_path = normalise_arg_path(arg_path)  # the tokenizer reports "$.to"; rules say "to"
        where = f"{dest}:{arg_path}" if arg_path else dest
        etype = ref.entity_type
        sources = sorted(ref.sources)

        def why_not(rule: Any) -> str | None:
            if rule.entities is not None and etype not in rule.entities:
                return f"entity type {etype} is not one of [{', '.join(sorted(rule.entities))}]"
            if rule.sources is not None and not any(rule.sources.matches(s) for s in sources):
                return f"value came from [{', '.join(sources) or 'nowhere known'}], not from [{rule.sources}]"
            if not rule.tools.matches(dest):
                return f"destination {dest} does not match [{rule.tools}]"
            if rule.args is not None and not rule.args.matches(arg_path):
                return f"argument '{arg_path}' does not match [{rule.args}]"
            return _who(rule, principal)

        found, steps = _first_match(
            self.flows,
            trace=trace,
            miss=lambda rule: _flow_miss(rule, etype, sources, dest, arg_path, principal),
            why_not=why_not,
            make_activation=lambda: activation(
                principal_name=principal.name,
                roles=principal.roles,
                tenant=principal.tenant,
                upstream=upstream,
                tool=tool,
                now=now,
                arg=arg_path,
                token_type=etype,
                sources=sources,
            ),
            denied="the flow is denied",
            subject=f"{etype} to {where}",
            matched=f"{etype} to {where}",
        )
        if found is not None:
            return found, steps
        if upstream in ref.sources:
            decision = Decision(
                True, "default:same-upstream", f"no rule matched; {etype} goes back to {upstream}, where it came from"
            )
        else:
            came = ", ".join(sources) or "an unknown upstream"
            decision = Decision(
                False,
                "default:deny",
                f"no rule matched and {etype} came from {came}, not from {upstream}: add a flow rule to allow it",
            )
        steps.append(Step(decision.rule, True, decision.reason))
        return decision, steps

    # -- access --------------------------------------------------------------------------------

    def decide_access(
        self, principal: PrincipalLike, upstream: str, tool: str, *, now: datetime | None = None
    ) -> Decision:
        """May ``principal`` list and call ``upstream__tool``?"""
        return self.explain_access(principal, upstream, tool, now=now, trace=False)[0]

    def decide_execute(self, principal: PrincipalLike, *, now: datetime | None = None) -> Decision:
        """May ``principal`` use execute_code (access rules on ``veil__execute_code``)?"""
        return self.decide_access(principal, EXECUTE_UPSTREAM, EXECUTE_TOOL, now=now)

    def decide_resource(
        self, principal: PrincipalLike, upstream: str, uri: str, action: str = "read", *, now: datetime | None = None
    ) -> Decision:
        """May ``principal`` list/read (or subscribe to, complete) the resource ``uri`` of ``upstream``?"""
        return self.explain_target(principal, "resource", upstream, uri, action, now=now, trace=False)[0]

    def decide_prompt(
        self, principal: PrincipalLike, upstream: str, prompt: str, action: str = "get", *, now: datetime | None = None
    ) -> Decision:
        """May ``principal`` list/get (or complete) ``upstream``'s prompt?"""
        return self.explain_target(principal, "prompt", upstream, prompt, action, now=now, trace=False)[0]

    def explain_access(
        self, principal: PrincipalLike, upstream: str, tool: str, *, now: datetime | None = None, trace: bool = True
    ) -> tuple[Decision, list[Step]]:
        return self.explain_target(principal, "tool", upstream, tool, "call", now=now, trace=trace)

    def explain_target(
        self,
        principal: PrincipalLike,
        kind: str,
        upstream: str,
        name: str,
        action: str,
        *,
        now: datetime | None = None,
        trace: bool = True,
    ) -> tuple[Decision, list[Step]]:
        """The access decision for a tool, resource or prompt, with the trace ``explain`` prints."""
        dest = f"{upstream}:{name}" if kind == "resource" else f"{upstream}__{name}"
        what = {"tool": "use", "resource": f"{action} the resource", "prompt": f"{action} the prompt"}[kind]
        if self.access is None:
            decision = Decision(
                True, "default:allow-all", "the policy has no access section: every principal may use everything"
            )
            return decision, [Step(decision.rule, True, decision.reason)]

        def target_miss(rule: Rule) -> str | None:
            globs = rule.globs(kind)
            if globs is None:
                return f"the rule names no {kind}s"
            if not globs.matches(dest):
                return f"{kind} {dest} does not match [{globs}]"
            if rule.actions is not None and action not in rule.actions:
                return f"action '{action}' is not one of [{', '.join(sorted(rule.actions))}]"
            return None

        found, steps = _first_match(
            self.access,
            trace=trace,
            miss=lambda rule: target_miss(rule) is not None or _who_miss(rule, principal),
            why_not=lambda rule: target_miss(rule) or _who(rule, principal),
            make_activation=lambda: activation(
                principal_name=principal.name,
                roles=principal.roles,
                tenant=principal.tenant,
                upstream=upstream,
                tool=name,
                now=now,
            ),
            denied="access is denied",
            subject=f"{principal.name} to {what} {dest}",
            matched=dest,
        )
        if found is not None:
            return found, steps
        decision = Decision(
            False,
            "default:deny",
            f"no access rule allows {principal.name} to {what} {dest}: add one to the access section",
        )
        steps.append(Step(decision.rule, True, decision.reason))
        return decision, steps


def _first_match(
    rules: Any,
    *,
    trace: bool,
    miss: Callable[[Any], bool],
    why_not: Callable[[Any], str | None],
    make_activation: Callable[[], dict[str, Any]],
    denied: str,
    subject: str,
    matched: str,
) -> tuple[Decision | None, list[Step]]:
    """First-match-wins over ``rules``, shared by flows and access.

    Without ``trace`` (the decide_* fast path) rules that cannot match are skipped before any
    reason is built. A ``when:`` condition that cannot be evaluated denies (fail closed). Returns
    the deciding rule's decision, or None when no rule matched, and the steps for ``explain``.
    """
    steps: list[Step] = []
    act: dict[str, Any] | None = None
    for rule in rules:
        if not trace and miss(rule):
            continue
        why = why_not(rule)
        if why is None and rule.when is not None:
            if act is None:
                act = make_activation()
            ok, text = _condition(rule, act)
            if ok is None:
                steps.append(Step(rule.ref, True, f"{text}; a rule whose condition fails denies"))
                reason = f"rule {rule.ref} could not evaluate its condition ({text}), so {denied}"
                return Decision(False, rule.ref, reason), steps
            if not ok:
                why = text
        if why is not None:
            steps.append(Step(rule.ref, False, why))
            continue
        verb = "allows" if rule.effect == "allow" else "denies"
        reason = f"rule {rule.ref} {verb} {subject}"
        if rule.description:
            reason += f" ({rule.description})"
        steps.append(Step(rule.ref, True, f"matches: {verb} {matched}"))
        return Decision(rule.effect == "allow", rule.ref, reason), steps
    return None, steps
