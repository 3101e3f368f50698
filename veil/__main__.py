"""``python -m veil``: the same as the ``veil`` command (used where the console script is not on PATH)."""

from veil.cli import main

main()
