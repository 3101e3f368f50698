"""Policy documents: model, loader, evaluator, lint/test/explain/diff and hot reload.

The interface other packages use (see docs/architecture.md, "Policy")::

    policy = load_policy(path)           # raises PolicyError(file, line, column)
    policy.decide_flow(principal, ref, upstream, tool, arg_path) -> Decision
    policy.decide_access(principal, upstream, tool) -> Decision
    policy.decide_execute(principal) -> Decision
    store = PolicyStore(path, on_change=..., on_rejected=...); store.start(); store.current
"""

from __future__ import annotations

from veil.errors import PolicyError
from veil.policies.loader import load_policy
from veil.policies.model import Decision, Policy, Step
from veil.policies.store import PolicyStore

__all__ = ["Decision", "Policy", "PolicyError", "PolicyStore", "Step", "load_policy"]
