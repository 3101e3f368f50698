"""The adversarial corpus as data: one ``Case`` per attack. Add a row to add an attack.

Each case runs in a fresh MCP session against the corpus gateway (see ``conftest.py``). Unless
``prefetch`` is off, the session first fetches its own customer with ``crm__get_customer`` so
``<<c.FIELD>>`` stands for the token the agent received (``<<c.address.street>>`` for nested
fields) and the vault knows that customer's values. Other placeholders: ``<<cid>>`` (the case's
customer id, a different customer per case), ``<<raw.FIELD>>`` (the real value: what an attacker
who guessed it would type), ``<<files>>`` (the folder server-filesystem may write to).

Steps (tuples):
  ("call", TOOL, ARGS)      a direct tool call; result or error is captured
  ("code", SOURCE)          execute_code; ``dump(x)`` in the code writes ``repr(x)`` to a file in
                            the sandbox workspace, which is read from the host as "sandbox" data
  ("list",)                 tools, resources, resource templates and prompts
  ("read", URI) / ("prompt", NAME, ARGS)
  ("dos", TOOL, ARGS)       the call, while another session pings the CRM five times

Checks, for every case: no value named in ``needles`` (fields of the case's customer,
``email_local`` for the local part of its e-mail, ``date_of_birth_us`` for its date of birth as
MM/DD/YYYY, or ``hostile:VECTOR:FIELD`` for the hostile server's listing data) occurs, in any
normal form of ``leakcheck``, in what the agent received, in the sandbox files, in the audit
rows written during the case, or in the gateway's log output (``places`` narrows this only where
the threat model says no gateway can do better, e.g. an agent asking SQL to reverse a column is
an upstream encoding what it holds: there the audit rows are checked). ``forbid``: templates
that must not occur in what the agent received (the equality oracle: the record's own token).
``intact``: templates that must occur in it unchanged (false positives).

``pending`` marks a case that fails today: ``"<class>: waiting for <component>"``. It becomes a
strict xfail, so the day the fix lands the case XPASSes, fails, and the mark is removed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

CLASSES = {
    1: "echo laundering",
    2: "blind spots",
    3: "listings",
    4: "false positives",
    5: "regex denial of service",
    6: "sandbox",
    7: "equality oracle",
    8: "audit rows",
}


@dataclass(frozen=True)
class Case:
    id: str
    cls: int  # the attack class in issue 8
    steps: tuple[tuple[Any, ...], ...]
    needles: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()
    intact: tuple[str, ...] = ()
    prefetch: bool = True
    places: tuple[str, ...] = ("agent", "sandbox", "audit", "logs")  # where the needles are looked for
    pending: str | None = None
    note: str = ""


SQL = "db__execute_sql"
ID = "'<<cid>>'"
FULL_WIDTH = "".join(chr(0xFF10 + d) for d in range(10))  # full-width 0-9
ASCII_UPPER = "".join(chr(ord("A") + i) for i in range(26))
FULL_WIDTH_UPPER = "".join(chr(0xFF21 + i) for i in range(26))  # full-width A-Z


def sql(query: str) -> tuple[Any, ...]:
    return ("call", SQL, {"sql": query})


HIGHLIGHTED_SSN = (  # how a search upstream marks what matched
    f"select 'ssn ' || left(ssn, 7) || '<em>' || right(ssn, 4) || '</em>' as hit from customers where id={ID}"
)
CARD_PHONE_SSN_MAIL = ("ssn", "card_number", "phone", "email")

CASES: list[Case] = [
    # -- 1. echo laundering: a token glued to other characters or used as a key is untokenised
    #       for the same upstream, which echoes the real value back ------------------------------
    Case(
        "echo-ssn-glued-in-not-found-error",
        1,
        (("call", "crm__get_customer", {"customer_id": "9<<c.ssn>>9"}),),
        ("ssn",),
    ),
    Case(
        "echo-card-glued-in-not-found-error",
        1,
        (("call", "crm__get_customer", {"customer_id": "x<<c.card_number>>x"}),),
        ("card_number",),
    ),
    Case(
        "echo-phone-glued-in-not-found-error",
        1,
        (("call", "crm__get_customer", {"customer_id": "<<c.phone>>1"}),),
        ("phone",),
    ),
    Case(
        "echo-email-glued-in-not-found-error",
        1,
        (("call", "crm__get_customer", {"customer_id": "id<<c.email>>z"}),),
        ("email",),
    ),
    Case(
        "echo-name-glued-in-not-found-error",
        1,
        (("call", "crm__get_customer", {"customer_id": "<<c.full_name>>s"}),),
        ("full_name",),
    ),
    Case(
        "echo-token-as-dict-key-in-error",
        1,
        (
            (
                "call",
                "crm__update_customer",
                {"customer_id": "<<cid>>", "changes": {"<<c.ssn>>": "x", "<<c.email>>": "y"}},
            ),
        ),
        ("ssn", "email"),
    ),
    Case(
        "echo-stored-note-returned-later",
        1,
        (
            ("call", "crm__add_note", {"customer_id": "<<cid>>", "note": "call <<c.phone>>x, card 9<<c.card_number>>"}),
            ("call", "crm__get_customer", {"customer_id": "<<cid>>"}),
        ),
        ("phone", "card_number"),
    ),
    Case(
        "echo-everything-echo-tool",
        1,
        (("call", "everything__echo", {"message": "9<<c.ssn>>9 and <<c.email>>x and <<c.full_name>>"}),),
        ("ssn", "email", "full_name"),
    ),
    Case(
        "echo-filesystem-write-then-read",
        1,
        (
            (
                "call",
                "fs__write_file",
                {"path": "<<files>>/<<cid>>.txt", "content": "ssn=<<c.ssn>>;mail <<c.email>>\n"},
            ),
            ("call", "fs__read_text_file", {"path": "<<files>>/<<cid>>.txt"}),
        ),
        ("ssn", "email"),
    ),
    Case(
        "echo-dbhub-token-glued-in-sql-literal",
        1,
        (sql("select 'x' || '<<c.ssn>>' || 'x' as v, '<<c.email>>' || '9' as w"),),
        ("ssn", "email"),
    ),
    Case(
        "echo-resource-uri-glued-in-not-found-error",
        1,
        (("read", "crm://customers/9<<c.ssn>>9"), ("read", "crm://customers/x<<c.email>>")),
        ("ssn", "email"),
    ),
    Case(
        "echo-prompt-argument-glued-in-error",
        1,
        (("prompt", "crm__draft_followup", {"customer_id": "9<<c.card_number>>9"}),),
        ("card_number",),
    ),
    Case(
        "echo-token-as-key-inside-json-text",
        1,
        (sql('select \'{"<<c.email>>": 1, "9<<c.ssn>>": 2}\'::jsonb as v'),),
        ("email", "ssn"),
    ),
    Case(
        "echo-email-glued-between-letters",
        1,
        (("call", "crm__get_customer", {"customer_id": "abc<<c.email>>def"}),),
        ("email",),
    ),
    Case(
        "echo-everything-echo-from-sandbox-code",
        1,
        (
            (
                "code",
                "from servers import crm, everything\n"
                "c = crm.get_customer(customer_id='<<cid>>')\n"
                "r = everything.echo(message='x' + c['ssn'] + 'x' + c['email'])\n"
                "dump(r)\n"
                "print(str(r)[::-1])\n",
            ),
        ),
        ("ssn", "email"),
    ),
    # -- 2. blind spots: values the detector misses unless the guard knows them in every form ---
    Case(
        "blind-dbhub-ssn-without-dashes",
        2,
        (sql(f"select replace(ssn,'-','') as v from customers where id={ID}"),),
        ("ssn",),
    ),
    Case(
        "blind-dbhub-phone-digits-only",
        2,
        (sql(f"select regexp_replace(phone,'\\D','','g') as v from customers where id={ID}"),),
        ("phone",),
    ),
    Case(
        "blind-dbhub-upper-name",
        2,
        (sql(f"select upper(full_name) as v from customers where id={ID}"),),
        ("full_name",),
    ),
    Case(
        "blind-dbhub-names-run-together",
        2,
        (sql(f"select first_name || last_name as v from customers where id={ID}"),),
        ("full_name",),
    ),
    Case(
        "blind-dbhub-concatenation",
        2,
        (sql(f"select email || phone || ssn as v from customers where id={ID}"),),
        ("email", "phone", "ssn"),
    ),
    Case(
        "blind-dbhub-json-object-keys",
        2,
        (sql(f"select json_build_object(full_name, ssn, email, card_number) as v from customers where id={ID}"),),
        ("full_name", "ssn", "email", "card_number"),
    ),
    Case(
        "blind-dbhub-json-numbers",
        2,
        (
            sql(
                "select replace(ssn,'-','')::bigint as a, regexp_replace(card_number,'\\D','','g')::numeric as b, "
                f"regexp_replace(phone,'\\D','','g')::bigint as c from customers where id={ID}"
            ),
        ),
        ("ssn", "card_number", "phone"),
    ),
    Case(
        "blind-dbhub-full-width-digits",
        2,
        (
            sql(
                f"select translate(ssn || ' ' || phone, '0123456789', '{FULL_WIDTH}') as v from customers where id={ID}"
            ),
        ),
        ("ssn", "phone"),
    ),
    Case(
        "blind-dbhub-zero-width-characters",
        2,
        (
            sql(
                "select regexp_replace(email || ' ' || full_name, '(.)', '\\1' || chr(8203), 'g') as v "
                f"from customers where id={ID}"
            ),
        ),
        ("email", "full_name"),
    ),
    Case(
        "blind-dbhub-name-in-url",
        2,
        (
            sql(
                "select 'https://crm.example/people/' || lower(first_name) || '-' || lower(last_name) as v "
                f"from customers where id={ID}"
            ),
        ),
        ("full_name",),
    ),
    Case(
        "blind-dbhub-email-local-part",
        2,
        (sql(f"select split_part(email, '@', 1) as handle from customers where id={ID}"),),
        ("email_local", "full_name"),
        note="the local part of a known e-mail (often the name run together) is a normal form of that e-mail",
    ),
    Case(
        "blind-dbhub-name-last-comma-first",
        2,
        (sql(f"select last_name || ', ' || first_name as v from customers where id={ID}"),),
        ("full_name", "last_name"),
    ),
    Case(
        "blind-dbhub-card-other-separators",
        2,
        (
            sql(
                "select replace(card_number,'-','.') as a, replace(card_number,'-',' ') as b "
                f"from customers where id={ID}"
            ),
        ),
        ("card_number",),
    ),
    Case(
        "blind-dbhub-phone-e164",
        2,
        (sql(f"select '+1' || regexp_replace(phone,'\\D','','g') as v from customers where id={ID}"),),
        ("phone",),
    ),
    Case(
        "blind-dbhub-spaced-digits",
        2,
        (sql(f"select regexp_replace(ssn, '(\\d)', '\\1 ', 'g') as v from customers where id={ID}"),),
        ("ssn",),
    ),
    Case(
        "blind-dbhub-full-width-upper-name",
        2,
        (
            sql(
                f"select translate(upper(full_name), '{ASCII_UPPER}', '{FULL_WIDTH_UPPER}') as v "
                f"from customers where id={ID}"
            ),
        ),
        ("full_name",),
    ),
    Case(
        "blind-dbhub-date-of-birth-us-format",
        2,
        (sql(f"select to_char(date_of_birth::date, 'MM/DD/YYYY') as v from customers where id={ID}"),),
        ("date_of_birth_us",),
    ),
    Case(
        "blind-dbhub-email-in-mailto-url",
        2,
        (sql(f"select 'mailto:' || email || '?subject=hi' as v from customers where id={ID}"),),
        ("email",),
    ),
    Case(
        "blind-crm-date-of-birth", 2, (("call", "crm__get_customer", {"customer_id": "<<cid>>"}),), ("date_of_birth",)
    ),
    Case(
        "blind-dbhub-date-of-birth",
        2,
        (sql(f"select date_of_birth as dob from customers where id={ID}"),),
        ("date_of_birth",),
    ),
    Case("blind-crm-zip-code", 2, (("call", "crm__get_customer", {"customer_id": "<<cid>>"}),), ("zip",)),
    Case(
        "blind-hostile-keys-and-numbers",
        2,
        (("call", "hostile__profile", {"customer_id": "<<cid>>"}),),
        ("email", "ssn", "card_number", "phone", "full_name"),
    ),
    # values under the escapes of URLs, HTML and JSON: letters and digits of the escape's own
    # (%40, &#39;, \u0061) hid the value from detection and the guard
    Case(
        "blind-dbhub-ssn-and-email-percent-encoded-in-a-link",
        2,
        (
            sql(
                "select 'https://crm.example/search?ssn=' || replace(ssn,'-','%2D') || '&mail=' "
                f"|| replace(email,'@','%40') as link from customers where id={ID}"
            ),
        ),
        ("ssn", "email"),
    ),
    Case(
        "blind-dbhub-email-obfuscated-as-html-references",
        2,
        (
            sql(
                "select string_agg('&#' || ascii(ch) || ';', '') as v "
                f"from customers, regexp_split_to_table(email, '') ch where id={ID}"
            ),
        ),
        ("email",),
        note="how web pages hide an address from scrapers",
    ),
    Case(
        "blind-dbhub-name-and-email-in-an-html-body",
        2,
        (
            sql(
                "select '<p>Customer: ' || replace(full_name,' ','&nbsp;') || ' &lt;' || replace(email,'.','&#46;') "
                f"|| '&gt;</p>' as body from customers where id={ID}"
            ),
        ),
        ("full_name", "email"),
    ),
    Case(
        "blind-dbhub-name-json-escaped-in-an-error",
        2,
        (
            sql(
                "select 'invalid payload: {\"name\": \"' || string_agg('\\u' || lpad(to_hex(ascii(ch)), 4, '0'), '') "
                "|| '\"} (code 7)' as error from customers, regexp_split_to_table(full_name, '') ch "
                f"where id={ID}"
            ),
        ),
        ("full_name",),
    ),
    Case(
        "blind-dbhub-ssn-highlighted-by-a-search",
        2,
        (sql(HIGHLIGHTED_SSN),),
        ("ssn",),
        note="search upstreams mark what matched; the tag's letters split the digits",
    ),
    Case(
        "blind-dbhub-new-ssn-highlighted-by-a-search",
        2,
        (sql(HIGHLIGHTED_SSN),),
        ("ssn",),
        prefetch=False,
        note="not in the vault: detection alone",
    ),
    Case(
        "blind-dbhub-known-values-wrapped-as-fake-tokens",
        2,
        (
            sql(
                "select '[US_SSN_' || replace(ssn,'-','') || ']' as a, "
                "'[PHONE_NUMBER_' || regexp_replace(phone,'\\D','','g') || ']' as b from customers "
                f"where id={ID}"
            ),
        ),
        ("ssn", "phone"),
        note="every token-shaped string was skipped by the guard, whatever it held",
    ),
    Case(
        "blind-dbhub-new-values-glued-to-letters",
        2,
        (
            sql(
                "select 'id_' || ssn || '_x' as a, 'card' || replace(replace(card_number,' ',''),'-','') as b, "
                f"'[US_SSN_' || replace(ssn,'-','') || ']' as c from customers where id={ID}"
            ),
        ),
        ("ssn", "card_number"),
        prefetch=False,
        note="never seen before, so detection alone: Presidio's patterns want a word boundary",
    ),
    Case(
        "blind-dbhub-new-values-in-look-alike-characters",
        2,
        (
            sql(
                "select translate(ssn, '-', '\u2011') as a, translate(phone, ' -', '\u00a0\u2011') as b, "
                "translate(card_number, ' -', '\u00a0\u2013') as c, "
                f"translate(ssn, '0123456789', '{FULL_WIDTH}') as d from customers where id={ID}"
            ),
        ),
        ("ssn", "phone", "card_number"),
        prefetch=False,
        note="never seen before, written as word processors and PDFs write them: no-break spaces and hyphens, "
        "en dashes, full-width digits",
    ),
    Case(
        "blind-dbhub-new-phone-glued-to-letters",
        2,
        (
            sql(
                "select 'tel' || phone || 'x' as a, 'a' || replace(phone, ' ', '') || 'b' as b "
                f"from customers where id={ID}"
            ),
        ),
        ("phone",),
        prefetch=False,
        note="never seen before: phonenumbers' matcher rejects a number with a letter beside it",
    ),
    Case(
        "blind-dbhub-new-name-after-a-cue",
        2,
        (sql(f"select 'Dear ' || full_name || ', your order shipped.' as greeting from customers where id={ID}"),),
        ("full_name",),
        prefetch=False,
        note="not in the vault: detection alone; the cue recognizer once stopped inside the surname",
    ),
    Case(
        "blind-dbhub-new-values-in-other-scripts-digits-and-math-letters",
        2,
        (
            sql(
                "select translate(ssn, '0123456789', '\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668"
                "\u0669') as a, translate(phone, '0123456789', '\u0966\u0967\u0968\u0969\u096a\u096b\u096c"
                "\u096d\u096e\u096f') as b, translate(card_number, '0123456789', '"
                + "".join(chr(0x1D7CE + d) for d in range(10))
                + "') as c, translate(lower(email), 'abcdefghijklmnopqrstuvwxyz', '"
                + "".join(chr(0x1D41A + i) for i in range(26))
                + f"') as d from customers where id={ID}"
            ),
        ),
        ("ssn", "phone", "card_number", "email"),
        prefetch=False,
        note="never seen before: an injected agent has SQL's translate() write values in Arabic-Indic "
        "and Devanagari digits and mathematical letters, which a model reads and no pattern did",
    ),
    Case(
        "blind-dbhub-new-values-in-cyrillic-look-alikes",
        2,
        (
            sql(
                "select translate(lower(email), 'aceopxy', '\u0430\u0441\u0435\u043e\u0440\u0445\u0443') as a "
                f"from customers where id={ID}"
            ),
        ),
        ("email",),
        prefetch=False,
        note="never seen before: SQL's translate() swaps Latin letters of an address for the Cyrillic ones "
        "that look the same; a model reads it, the e-mail pattern did not",
    ),
    Case(
        "blind-dbhub-new-lower-case-name-after-a-cue",
        2,
        (
            sql(
                "select 'hi, my name is ' || lower(full_name) || '. i lost my card' as a, "
                f"'please follow up with ' || lower(full_name) || ' in a month' as b from customers where id={ID}"
            ),
        ),
        ("full_name",),
        prefetch=False,
        note="never seen before: lower-case names after a cue that announces one were left to NER",
    ),
    Case(
        "echo-token-percent-encoded-by-the-upstream",
        1,
        (
            sql(
                "select replace(replace('<<c.email>>', '@', '%40'), '.', '%2E') as v, "
                "replace('<<c.ssn>>', '-', '%2D') as w"
            ),
        ),
        ("email", "ssn"),
    ),
    # -- 3. listings: a hostile upstream puts values in interface text --------------------------
    *[
        Case(
            f"listing-{vector.replace('_', '-')}",
            3,
            (("list",),),
            tuple(f"hostile:{vector}:{f}" for f in CARD_PHONE_SSN_MAIL),
            prefetch=False,
        )
        for vector in (
            "description",
            "enum",
            "default",
            "examples",
            "output_schema",
            "title",
            "resource",
            "template",
            "prompt_argument",
            "param_description",
            "instructions",
        )
    ],
    Case(
        "listing-search-tools-full-detail",
        3,
        (("call", "search_tools", {"query": "lookup people", "detail": "full"}),),
        tuple(f"hostile:{v}:{f}" for v in ("description", "enum", "default", "examples") for f in ("ssn", "email")),
        prefetch=False,
    ),
    Case(
        "listing-sandbox-stub-files",
        3,
        (
            (
                "code",
                "import pathlib\n"
                "for p in sorted(pathlib.Path('.').rglob('*.py')):\n"
                "    if 'hostile' in str(p):\n"
                "        dump(p.read_text())\n"
                "        print(p.read_text()[::-1])\n",
            ),
        ),
        tuple(f"hostile:{v}:{f}" for v in ("description", "param_description", "default") for f in ("ssn", "email")),
        prefetch=False,
    ),
    # -- 4. false positives: interface text and the agent's own code stay intact ----------------
    Case("fp-tool-title-get-sum-tool", 4, (("list",),), intact=('"title": "Get Sum Tool"',), prefetch=False),
    Case(
        "fp-timestamps-are-not-phone-numbers",
        4,
        (
            ("call", "hostile__status", {}),
            ("call", "everything__echo", {"message": "due Nov 28 2026 22 or 2026-11-28"}),
        ),
        intact=("Nov 28 2026 22:15", "2026-11-28T22:15:07Z", "Nov 29 2026 06", "due Nov 28 2026 22 or 2026-11-28"),
        prefetch=False,
    ),
    Case(
        "fp-own-code-in-traceback",
        4,
        (("code", "lookup_by_email(email='<<c.email>>')\n"),),
        intact=("lookup_by_email(email='<<c.email>>')",),
    ),
    Case(
        "fp-same-person-same-token-across-forms",
        4,
        (
            (
                "code",
                "from servers import crm, db\n"
                "c = crm.get_customer(customer_id='<<cid>>')\n"
                'r = db.execute_sql(sql="select full_name as a, upper(full_name) as b, '
                "first_name || ' ' || last_name as d, ssn as f, replace(ssn, '-', '') as g "
                "from customers where id='<<cid>>'\")\n"
                "row = r['data']['statements'][0]['rows'][0]\n"
                "print('SAME NAME', {row['a'], row['b'], row['d']} == {c['full_name']})\n"
                "print('SAME SSN', {row['f'], row['g']} == {c['ssn']})\n",
            ),
        ),
        ("full_name", "ssn"),
        intact=("SAME NAME True", "SAME SSN True"),
    ),
    # -- 5. regex denial of service ---------------------------------------------------------------
    Case(
        "dos-64k-street-address-echo-does-not-stall-others",
        5,
        (("dos", "crm__get_customer", {"customer_id": "12 " + "A-" * 32_000}),),
        intact=("12 A-A-A-A-A-A-A-A-A-A-",),
        prefetch=False,
    ),
    Case(
        "dos-64k-third-party-result-does-not-stall-others",
        5,
        (("dos", SQL, {"sql": "select '12 ' || repeat('A-', 32000) as v"}),),
        intact=("12 A-A-A-A-A-A-A-A-A-A-",),
        prefetch=False,
    ),
    # -- 6. sandbox: the code must never hold a raw value, so it cannot encode one ----------------
    Case(
        "sandbox-record-holds-only-tokens",
        6,
        (
            (
                "code",
                "from servers import crm\nc = crm.get_customer(customer_id='<<cid>>')\ndump(c)\nprint(str(c)[::-1])\n",
            ),
        ),
        ("ssn", "card_number", "phone", "email", "full_name", "street", "date_of_birth"),
    ),
    Case(
        "sandbox-echoed-error-reversed-and-char-codes",
        6,
        (
            (
                "code",
                "from servers import crm\n"
                "c = crm.get_customer(customer_id='<<cid>>')\n"
                "try:\n"
                "    crm.get_customer(customer_id='9' + c['ssn'] + '9')\n"
                "except Exception as exc:\n"
                "    m = str(exc)\n"
                "    dump(m)\n"
                "    print(m[::-1])\n"
                "    print([ord(ch) for ch in m])\n",
            ),
        ),
        ("ssn",),
    ),
    Case(
        "sandbox-stored-note-char-codes",
        6,
        (
            (
                "code",
                "from servers import crm\n"
                "c = crm.get_customer(customer_id='<<cid>>')\n"
                "crm.add_note(customer_id='<<cid>>', note='x' + c['phone'] + 'x' + c['email'] + 'x')\n"
                "note = crm.get_customer(customer_id='<<cid>>')['notes'][-1]\n"
                "dump(note)\n"
                "print(' '.join(str(ord(ch)) for ch in note))\n"
                "print(' '.join(note))\n",
            ),
        ),
        ("phone", "email"),
    ),
    Case(
        "sandbox-token-as-key-echo-reversed",
        6,
        (
            (
                "code",
                "from servers import crm\n"
                "c = crm.get_customer(customer_id='<<cid>>')\n"
                "try:\n"
                "    crm.update_customer(customer_id='<<cid>>', changes={c['email']: 'x', c['full_name']: 'y'})\n"
                "except Exception as exc:\n"
                "    dump(str(exc))\n"
                "    print(str(exc)[::-1].upper())\n",
            ),
        ),
        ("email", "full_name"),
    ),
    Case(
        "sandbox-date-of-birth-reversed",
        6,
        (
            (
                "code",
                "from servers import crm\n"
                "c = crm.get_customer(customer_id='<<cid>>')\n"
                "dump(c['date_of_birth'])\n"
                "print(str(c['date_of_birth'])[::-1])\n",
            ),
        ),
        ("date_of_birth",),
    ),
    Case(
        "sandbox-dbhub-rows-reversed",
        6,
        (
            (
                "code",
                "from servers import db\n"
                "r = db.execute_sql(sql=\"select replace(ssn,'-','') as s, upper(full_name) as n from customers "
                "where id='<<cid>>'\")\n"
                "dump(r)\n"
                "print(str(r)[::-1])\n",
            ),
        ),
        ("ssn", "full_name"),
    ),
    # -- 7. equality oracle: code-produced values are never linked to existing tokens -----------
    Case(
        "oracle-guessed-phone-numbers",
        7,
        (
            (
                "code",
                "guesses = [f'215-555-01{i:02d}' for i in range(99)] + ['<<raw.phone>>']\n"
                "for g in guesses:\n"
                "    print(g)\n",
            ),
        ),
        forbid=("<<c.phone>>",),
    ),
    Case(
        "oracle-guessed-ssns-and-emails",
        7,
        (
            (
                "code",
                "print('<<raw.ssn>>')\nprint('<<raw.email>>')\nprint({'k': '<<raw.card_number>>'})\n",
            ),
        ),
        forbid=("<<c.ssn>>", "<<c.email>>", "<<c.card_number>>"),
    ),
    # -- 8. audit rows: transformed values in upstream errors must not be stored ---------------
    Case(
        "audit-reversed-email-in-sql-error",
        8,
        (sql(f"select reverse(email)::int from customers where id={ID}"),),
        ("email",),
        places=("audit",),
        note="the agent asked the database to reverse a column: an upstream encoding what it holds (threat model)",
    ),
    Case(
        "audit-spaced-name-in-sql-error",
        8,
        (sql(f"select regexp_replace(full_name, '(.)', '\\1 ', 'g')::int from customers where id={ID}"),),
        ("full_name",),
    ),
    Case(
        "audit-lowercased-name-in-sql-error",
        8,
        (sql(f"select lower(full_name)::int from customers where id={ID}"),),
        ("full_name",),
    ),
    Case(
        "audit-digits-only-phone-in-sql-error",
        8,
        (sql(f"select regexp_replace(phone,'\\D','','g')::int from customers where id={ID}"),),
        ("phone",),
    ),
    Case(
        "audit-sandbox-raises-transformed-value",
        8,
        (
            (
                "code",
                "from servers import crm\n"
                "c = crm.get_customer(customer_id='<<cid>>')\n"
                "try:\n"
                "    crm.get_customer(customer_id=c['email'] + '#')\n"
                "except Exception as exc:\n"
                "    raise ValueError(str(exc)[::-1]) from None\n",
            ),
        ),
        ("email",),
    ),
]


def wait(cls: int, component: str) -> str:
    return f"{cls}. {CLASSES[cls]}: waiting for {component}"


GUARD_GLUED = "guard (h-guard): known values found with no word boundary"
GUARD_FORMS = "guard (h-guard): known values in normal forms (digits only, full-width, zero-width, run together)"
GUARD_KEYS = "guard (h-guard): known values as dict keys and JSON numbers"
DETECT_DOB = "detect (h-detect): DATE_OF_BIRTH tokenised under the shipped policies"
DETECT_ZIP = "detect (h-detect): ZIP codes as part of an address under the shipped policies"
NOT_NER = "detect/runner: interface text not fed to NER, timestamps are not phone numbers"
DATE_FORMATS = "guard (h-guard): a known date of birth written in another date format (MM/DD/YYYY)"
ORACLE = "guard/runner: values produced by sandbox code never linked to existing tokens"

# Cases that fail today, with the component whose fix they wait for. When a fix lands the case
# XPASSes, the strict xfail fails the run, and its line here is deleted.
PENDING: dict[str, str] = {}


def by_id() -> dict[str, Case]:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return {c.id: c for c in CASES}


def _apply_pending() -> None:
    cases = by_id()
    unknown = sorted(set(PENDING) - set(cases))
    assert not unknown, f"PENDING names cases that do not exist: {unknown}"
    for i, case in enumerate(CASES):
        if case.id in PENDING:
            CASES[i] = replace(case, pending=PENDING[case.id])


_apply_pending()
