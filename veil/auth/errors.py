"""Authentication failures with a machine-readable reason, safe to show and to audit.

The message says what is wrong and what to do; it never contains the presented credential.
``reason`` is one of the stable codes below, recorded in the ``auth.failed`` audit event.
"""

from __future__ import annotations

from veil.errors import AuthError

MISSING = "missing"
MALFORMED = "malformed"
UNKNOWN_KEY = "unknown_key"
REVOKED = "revoked"
EXPIRED = "expired"
BAD_SIGNATURE = "bad_signature"
WRONG_AUDIENCE = "wrong_audience"
WRONG_ISSUER = "wrong_issuer"
NOT_ACCEPTED = "not_accepted"
INVALID_CLAIMS = "invalid_claims"


def auth_error(reason: str, message: str) -> AuthError:
    err = AuthError(message)
    err.reason = reason  # type: ignore[attr-defined]
    return err
