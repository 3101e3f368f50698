"""The output budget is shared fairly and cuts are announced."""

from __future__ import annotations

from veil.sandbox.output import cap_output


def test_small_output_is_untouched():
    assert cap_output(b"out", 3, b"err", 3, "'r'", 100) == ("out", "err", "'r'", False)


def test_big_stdout_is_cut_and_short_streams_kept():
    out = b"a" * 101
    stdout, stderr, result, truncated = cap_output(out, 5000, b"err", 3, "'r'", 100)
    assert truncated and stderr == "err" and result == "'r'"
    assert stdout.startswith("a" * 94) and stdout.endswith("[output truncated: 4906 more bytes not shown]")


def test_multibyte_characters_are_not_split_into_garbage():
    stdout, *_ = cap_output("é".encode() * 60, 120, b"", 0, None, 11)
    assert stdout.startswith("é" * 5) and "\ufffd" not in stdout
