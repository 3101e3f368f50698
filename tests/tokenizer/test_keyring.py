from __future__ import annotations

import base64
import logging
import os
import stat

import pytest

from veil.errors import ConfigError
from veil.tokenizer.keyring import ENV_VAR, Keyring, key_id_of


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.mark.req("vault:master-key")
def test_creates_key_file_with_0600_and_warns_where(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="veil.tokenizer.keyring"):
        ring = Keyring.load(tmp_path / "data", None)
    path = tmp_path / "data" / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in caplog.text
    key = base64.b64decode(path.read_text())
    assert key not in caplog.text.encode() and path.read_text().strip() not in caplog.text
    assert ring.current_id == key_id_of(key)
    # a second start reads the same key back, silently
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="veil.tokenizer.keyring"):
        again = Keyring.load(tmp_path / "data", None)
    assert again.keys == ring.keys and again.hmac_key == ring.hmac_key
    assert caplog.text == ""


@pytest.mark.req("vault:master-key")
def test_env_var_wins_and_supports_rotation(tmp_path, monkeypatch):
    new, old = os.urandom(32), os.urandom(32)
    monkeypatch.setenv(ENV_VAR, f"{base64.b64encode(new).decode()},{base64.b64encode(old).decode()}")
    ring = Keyring.load(tmp_path, None)
    assert ring.current_id == key_id_of(new)
    assert set(ring.keys) == {key_id_of(new), key_id_of(old)}
    # the HMAC key follows the oldest key, so look-ups survive a rotation
    assert ring.hmac_key == Keyring.from_keys(old).hmac_key
    assert not (tmp_path / "master.key").exists()


def test_key_file_is_read(tmp_path):
    key = os.urandom(32)
    f = tmp_path / "veil.key"
    f.write_text(base64.b64encode(key).decode() + "\n")
    assert Keyring.load(tmp_path / "unused", f).keys == {key_id_of(key): key}


@pytest.mark.parametrize(
    "content, message",
    [("not base64!!", "not valid base64"), (base64.b64encode(b"short").decode(), "exactly 32 bytes"), ("", "empty")],
)
def test_bad_key_file_names_the_file(tmp_path, content, message):
    f = tmp_path / "veil.key"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message) as exc:
        Keyring.load(tmp_path, f)
    assert str(f) in str(exc.value)


def test_missing_key_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=ENV_VAR):
        Keyring.load(tmp_path, tmp_path / "absent.key")
