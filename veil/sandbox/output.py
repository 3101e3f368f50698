"""Fit stdout, stderr and the result repr into one output budget, saying what was cut.

The agent's context is what the budget protects, so the three streams share
``max_output_bytes``: if together they fit, nothing is cut; otherwise each gets a fair share
(short streams keep everything, long ones split what is left) and a note says how much is gone.
"""

from __future__ import annotations


def _fair_shares(sizes: list[int], budget: int) -> list[int]:
    """Max-min fair split of ``budget`` bytes among streams of the given sizes."""
    shares = [0] * len(sizes)
    pending = sorted(range(len(sizes)), key=lambda i: sizes[i])
    left = budget
    while pending:
        each = left // len(pending)
        i = pending[0]
        if sizes[i] <= each:
            shares[i] = sizes[i]
            left -= sizes[i]
            pending.pop(0)
        else:
            for j in pending:
                shares[j] = each
            break
    return shares


def _cut(data: bytes, keep: int, total: int) -> str:
    text = data[:keep].decode("utf-8", errors="replace")
    if total > keep:
        text = text.rstrip("\ufffd")
        text += f"\n[output truncated: {total - keep} more bytes not shown]"
    return text


def cap_output(
    out: bytes, out_total: int, err: bytes, err_total: int, result: str | None, cap: int
) -> tuple[str, str, str | None, bool]:
    """(stdout, stderr, result, truncated) within ``cap`` bytes plus the truncation notes.

    ``out``/``err`` hold at most ``cap + 1`` bytes of streams whose full sizes were
    ``out_total``/``err_total``.
    """
    res = (result or "").encode()
    sizes = [out_total, err_total, len(res)]
    if sum(sizes) <= cap:
        return out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace"), result, False
    keep_out, keep_err, keep_res = _fair_shares(sizes, cap)
    new_result = None if result is None else _cut(res, keep_res, len(res))
    return _cut(out, keep_out, out_total), _cut(err, keep_err, err_total), new_result, True
