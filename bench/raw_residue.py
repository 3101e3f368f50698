"""Raw PII left beside the tokens: what the agent would still read after tokenising.

The detection-quality score (``detection_quality.py``) counts a value found when half its
characters are predicted, so a span that stops inside a word ("Maria L" for "Maria Lopez", the
agent reading ``[PERSON_1]opez``) scores as a hit. This counts what is left raw instead, through
the real ``Tokenizer`` (Presidio, the vault, the guard) on a scratch database, per tree:

* the demo CRM's 400 customer records (``examples/crm_data.py``; their notes name other people
  in free text): tokens with letters glued to either side;
* presidio-research's 1,500 labelled sentences, each as a ``note`` field: labelled PII spans
  (every type but DATE_TIME, NRP, ORGANIZATION, TITLE and AGE; words of 3+ letters or digits,
  not "and", "the", "corner" or the data set's "nan")
  left wholly raw, and partly raw (some of its words, or a piece of a word beside a token);
* echoes under escapes: after each customer's record is tokenised, its SSN, e-mail, phone and
  full name come back percent-encoded in a link, as HTML numeric references, and JSON-escaped
  in an error message (what an upstream that calls a web API, renders HTML or quotes JSON
  returns); values of which any form is left in the decoded output.

    DATABASE_URL=postgresql://... .venv/bin/python bench/raw_residue.py [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data/presidio_synth_dataset_v2.json")
TOKEN = re.compile(r"\[[A-Z][A-Z0-9_]*_\d+\]")
UNSCORED = {"DATE_TIME", "NRP", "ORGANIZATION", "TITLE", "AGE"}
LETTERS = r"[^\W\d_]+"
# Words inside labelled spans that identify nobody: English stop words ("the corner of X and Y")
# and the data set's "nan" (a missing value written out by its generator).
NOT_PII_WORDS = frozenset({"and", "the", "nan", "for", "corner"})


def glued(out: str) -> int:
    n = 0
    for m in TOKEN.finditer(out):
        after = re.match(LETTERS, out[m.end() : m.end() + 40])
        before = re.search(LETTERS + "$", out[max(0, m.start() - 40) : m.start()])
        n += bool(after or before)
    return n


def raw_words(words: list[str], out: str) -> list[str]:
    """The words of a value still in ``out``: whole, or a piece of one glued to a token."""
    left = []
    for w in words:
        whole = re.search(rf"(?<![^\W_]){re.escape(w)}(?![^\W_])", out)
        piece = any(
            re.search(rf"\]{re.escape(w[k:])}(?![^\W_])|(?<![^\W_]){re.escape(w[:k])}\[", out)
            for k in range(1, len(w) - 2)
        )
        if whole or piece:
            left.append(w)
    return left


def escaped_forms(value: str) -> list[str]:
    return [
        "GET https://crm.example/search?q=" + urllib.parse.quote(value, safe="") + " -> 404",
        "<td>" + "".join(f"&#{ord(c)};" for c in value) + "</td>",
        'invalid payload: {"v": "' + "".join(f"\\u{ord(c):04x}" for c in value) + '"} (code 7)',
    ]


def alnum(text: str) -> str:
    return re.sub(r"[\W_]+", "", text).casefold()


def child(database_url: str) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "examples"))
    from crm_data import generate_customers

    from veil import db
    from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings

    engine = db.create_engine(database_url)
    tok = Tokenizer(engine, Keyring.from_keys(os.urandom(32)), DetectionSettings(), TokenSettings())
    t0 = time.perf_counter()
    tokens = glued_tokens = echoes = echoes_raw = 0
    for c in generate_customers(400, 7):
        scope = Scope(f"bench:{uuid.uuid4().hex}")
        out = json.dumps(tok.tokenize(c, scope, "crm").value)
        tokens += len(TOKEN.findall(out))
        glued_tokens += glued(out)
        for field in ("ssn", "email", "phone", "full_name"):
            for text in escaped_forms(c[field]):
                back = tok.tokenize({"error": text}, scope, "crm").value["error"]
                plain = html.unescape(
                    urllib.parse.unquote(re.sub(r"\\u([0-9a-f]{4})", lambda m: chr(int(m[1], 16)), back))
                )
                echoes += 1
                echoes_raw += alnum(c[field]) in alnum(plain)
    crm_s = time.perf_counter() - t0
    spans = whole = part = 0
    t0 = time.perf_counter()
    for row in json.loads(DATA.read_text()):
        text = row["full_text"]
        out = tok.tokenize({"note": text}, Scope(f"bench:{uuid.uuid4().hex}"), "crm").value["note"]
        for sp in row["spans"]:
            if sp["entity_type"] in UNSCORED:
                continue
            value = text[sp["start_position"] : sp["end_position"]]
            words = [w for w in re.findall(r"[^\W_]+", value) if len(w) >= 3 and w.lower() not in NOT_PII_WORDS]
            if not words:
                continue
            spans += 1
            left = raw_words(words, out)
            whole += len(left) == len(words)
            part += 0 < len(left) < len(words)
    engine.dispose()
    return {
        "crm_tokens": tokens,
        "crm_glued": glued_tokens,
        "crm_s": round(crm_s, 1),
        "echoes": echoes,
        "echoes_raw": echoes_raw,
        "spans": spans,
        "spans_wholly_raw": whole,
        "spans_partly_raw": part,
        "sentences_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--baseline-tree", help="also measure another checkout (before/after)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("set DATABASE_URL to a PostgreSQL server (a scratch database is created on it)")
    if args.child:
        print(json.dumps(child(args.database_url)))
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from scratch import scratch_database
    from trees import python_env, run_for_json

    trees = {"this tree": ROOT}
    if args.baseline_tree:
        trees["baseline"] = Path(args.baseline_tree)
    for name, tree in trees.items():
        with scratch_database(args.database_url) as url:
            r = run_for_json([str(Path(__file__).resolve()), "--child", "--database-url", url], python_env(tree))
        print(
            f"{name}: CRM {r['crm_glued']} of {r['crm_tokens']} tokens with letters glued; "
            f"escaped echoes {r['echoes_raw']} of {r['echoes']} left raw; "
            f"presidio-research {r['spans']} PII spans, {r['spans_wholly_raw']} wholly raw, "
            f"{r['spans_partly_raw']} partly raw ({r['crm_s']} s + {r['sentences_s']} s)"
        )


if __name__ == "__main__":
    main()
