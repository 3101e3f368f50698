"""One real console for the module: ``veil console --config veil.yaml --http`` in a subprocess, on a
real Postgres whose vault and audit trail hold seeded people, driven by headless Chromium
(Debian's ``/usr/bin/chromium``, through Playwright).

Seeding goes through the real vault (values in, encrypted; tokens out) and the real audit
writer (a valid hash chain, then a signed checkpoint). Every page the browser is shown is kept
in ``Console.pages``, so a test can look for the seeded raw values in all of them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from veil import db
from veil.audit import AuditWriter
from veil.audit import events as ev
from veil.audit.checkpoints import checkpoint_file, load_signing_key, make_checkpoint
from veil.audit.events import AuditEvent, Untokenised
from veil.auth.keys import create_key
from veil.tokenizer import Keyring, Scope
from veil.tokenizer.vault import Vault

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("VEIL_CHROMIUM", "/usr/bin/chromium")

# The people in the vault: every form of these must stay out of every page.
JANE_EMAIL = "jane.doe@example.com"
JANE_PHONE = "+1 415 555 0100"
JANE_NAME = "Jane Doe"
OMAR_EMAIL = "omar.haddad@example.org"
SEEDED = [JANE_EMAIL, JANE_PHONE, JANE_NAME, OMAR_EMAIL]


@dataclass
class Console:
    url: str
    engine: sa.Engine
    config: Path
    policy: Path
    data_dir: Path
    keys: dict[str, str]  # role -> API key
    jane_tokens: list[str]
    pages: list[tuple[str, str]] = field(default_factory=list)  # (url, html) of every page shown

    def events(self, kind: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.text("SELECT * FROM audit_events WHERE kind = :k ORDER BY seq"), {"k": kind}).mappings()
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(engine: sa.Engine, data_dir: Path) -> list[str]:
    """People tokenised by the real tokenizer, and a trail that mentions them; returns Jane's tokens."""
    vault = Vault(engine, Keyring.load(data_dir))
    s1, s2 = Scope("session:s-alice"), Scope("session:s-bob")
    people = [(JANE_EMAIL, "EMAIL_ADDRESS"), (JANE_PHONE, "PHONE_NUMBER"), (JANE_NAME, "PERSON")]
    jane = dict(zip(("email", "phone", "name"), (e.token for e in vault.assign(s1.key, people, "crm")), strict=True))
    omar = {"email": vault.assign(s2.key, [(OMAR_EMAIL, "EMAIL_ADDRESS")], "crm")[0].token}

    def call(who: str, scope: Scope, **kw: Any) -> AuditEvent:
        return AuditEvent(
            kind=ev.TOOL_CALL,
            principal=who,
            roles=["support"],
            session_id=scope.key.split(":")[1],
            scope=scope.key,
            args_digest="sha256:" + "ab" * 32,
            duration_ms=12.5,
            policy_version="f" * 64,
            **kw,
        )

    events = [AuditEvent(kind=ev.POLICY_LOAD, principal="veil", policy_version="f" * 64, detail={"reason": "start"})]
    events.append(AuditEvent(kind=ev.SESSION_OPEN, principal="alice", session_id="s-alice", scope=s1.key))
    for _ in range(3):
        events.append(
            call(
                "alice",
                s1,
                upstream="crm",
                tool="find_customers",
                tokens=sorted(jane.values()),
                entities={"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1, "PERSON": 1},
            )
        )
    events.append(
        call(
            "alice",
            s1,
            upstream="mailer",
            tool="send_email",
            decision="allow",
            rule="flows[0]:crm-to-mailer",
            untokenised=[
                Untokenised(jane["email"], "EMAIL_ADDRESS", "mailer__send_email:to", "flows[0]:crm-to-mailer")
            ],
        )
    )
    for i in range(70):  # enough for two pages of bob's calls
        events.append(
            call(
                "bob",
                s2,
                upstream="crm",
                tool="get_customer",
                tokens=[omar["email"]],
                entities={"EMAIL_ADDRESS": 1},
                outcome=ev.DENIED if i % 10 == 0 else ev.OK,
                decision="deny" if i % 10 == 0 else "allow",
                rule="access[1]" if i % 10 == 0 else None,
            )
        )
    with AuditWriter(engine) as writer:
        for event in events:
            writer.record_sync(event)
    with engine.begin() as conn:
        make_checkpoint(conn, load_signing_key(data_dir), checkpoint_file(data_dir))
    return sorted(jane.values())


@pytest.fixture(scope="module")
def console(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    url = make_database()
    engine = db.create_engine(url)
    home = tmp_path_factory.mktemp("console")
    data_dir = home / "data"
    data_dir.mkdir()
    policy = home / "policy.yaml"
    shutil.copy(ROOT / "policies" / "default.yaml", policy)
    config = home / "veil.yaml"
    config.write_text(yaml.safe_dump({"database_url": url, "data_dir": str(data_dir), "policy": str(policy)}))
    Keyring.load(data_dir)  # the gateway's keys exist before the console starts (it never creates them)
    load_signing_key(data_dir)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = (home / "console.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "veil", "console", "--config", str(config), "--http", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=home,
    )
    jane_tokens = seed(engine, data_dir)  # while the console starts
    keys = {
        "compliance": create_key(engine, "olivia", ["compliance"])[1],
        "security": create_key(engine, "sam", ["security"])[1],
        "support": create_key(engine, "agent-7", ["support"])[1],
    }
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the console did not start:\n" + (home / "console.log").read_text()) from None
            time.sleep(0.05)
    try:
        yield Console(base, engine, config, policy, data_dir, keys, jane_tokens)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (the console tests drive it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Page:
    """A logged-in browser tab that keeps the HTML of every page it is shown."""

    def __init__(self, console: Console, browser: Any, role: str | None) -> None:
        self.console = console
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.context.set_default_timeout(30_000)  # a bound for loaded CI machines, not a timing assert
        self.tab = self.context.new_page()
        if role is not None:
            self.login(console.keys[role])

    def keep(self) -> None:
        self.console.pages.append((self.tab.url, self.tab.content()))

    def goto(self, path: str) -> Any:
        response = self.tab.goto(self.console.url + path)
        self.keep()
        return response

    def submit(self, selector: str, timeout: float = 30_000) -> Any:
        """Click a button or link that loads a page; returns that page's response."""
        with self.tab.expect_navigation(timeout=timeout) as nav:
            self.tab.click(selector, timeout=timeout)
        self.keep()
        return nav.value

    def login(self, key: str) -> Any:
        self.goto("/console/login")
        self.tab.fill("#credential", key)
        return self.submit("button[type=submit]")

    def cookie(self) -> dict[str, str]:
        return {"cookie": "; ".join(f"{c['name']}={c['value']}" for c in self.context.cookies())}

    def get(self, path: str) -> Any:
        """A GET outside navigation (a download), with the session cookie."""
        return self.context.request.get(self.console.url + path, headers=self.cookie())

    def post(self, path: str, form: dict[str, str], headers: dict[str, str] | None = None) -> Any:
        """A POST outside the page's forms, with the session cookie (Playwright's API requests
        leave SameSite=Strict cookies out, so it is set here by hand)."""
        return self.context.request.post(
            self.console.url + path, form=form, headers={**self.cookie(), **(headers or {})}
        )

    def shot(self, name: str, *, full: bool = False) -> None:
        """With VEIL_CONSOLE_SCREENSHOTS=DIR, save this page as DIR/console-NAME.png (docs/console.md)."""
        folder = os.environ.get("VEIL_CONSOLE_SCREENSHOTS")
        if folder:
            self.tab.screenshot(path=str(Path(folder) / f"console-{name}.png"), full_page=full)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def as_role(console: Console, browser: Any) -> Iterator[Callable[[str | None], Page]]:
    opened: list[Page] = []

    def make(role: str | None) -> Page:
        page = Page(console, browser, role)
        opened.append(page)
        return page

    yield make
    for page in opened:
        page.close()
