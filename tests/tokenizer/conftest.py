"""Fixtures for the tokenizer tests: one real Presidio/spaCy load per session, one migrated
database, and a fresh scope per test so tests never see each other's tokens."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from veil import db
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings
from veil.tokenizer.detector import Detector

MASTER = os.urandom(32)


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring.from_keys(MASTER)


@pytest.fixture(scope="session")
def session_engine(database_url: str) -> Iterator[sa.Engine]:
    eng = db.create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def tokenizer(session_engine: sa.Engine, keyring: Keyring) -> Tokenizer:
    """The real thing (Presidio + the default spaCy model), loaded once for the whole session."""
    return Tokenizer(session_engine, keyring, DetectionSettings(), TokenSettings())


@pytest.fixture(scope="session")
def detector(tokenizer: Tokenizer) -> Detector:
    return tokenizer.detector


@pytest.fixture
def scope() -> Scope:
    return Scope(f"session:{uuid.uuid4().hex}")


def allow_all(ref, path) -> None:
    """A ``decide`` that permits every flow."""
