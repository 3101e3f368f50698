"""What the NER pool's fork server loads before it forks any worker (multiprocessing's
``forkserver`` preload, ``veil.tokenizer.nerpool``).

Spawned workers each started a new interpreter, imported spaCy and Presidio and loaded the
model: seconds of CPU per worker at every gateway start and for every replacement worker, and a
private copy of the model in each. Forked from a server that has already done it once, a worker
starts at once and shares the model's pages with its siblings until it writes to them.

The model's name comes from ``VEIL_NER_PRELOAD_MODEL``, which the pool sets while it starts the
fork server (multiprocessing passes the server nothing but module names). Importing this module
is what preloads: only the fork server imports it. A failure here is swallowed: each worker loads
the model itself when it is missing and reports its own failure.
"""

from __future__ import annotations

import contextlib
import gc
import os

from veil.tokenizer.nerpool import MODEL_ENV


def _preload() -> None:
    os.dup2(2, 1)  # stdout may be the gateway's stdio MCP channel: nothing of ours may land there
    with contextlib.suppress(Exception):
        import veil.tokenizer.detector  # noqa: F401 - spaCy, Presidio and the recognizers' modules
        from veil.tokenizer.nlp import load_ner_pipeline

        model = os.environ.get(MODEL_ENV)
        if model:
            load_ner_pipeline(model)
    # What is loaded now lives as long as the server and its workers: out of the collector's
    # sight, so collections in the workers do not touch (and copy) its pages.
    gc.collect()
    gc.freeze()


_preload()
