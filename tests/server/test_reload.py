"""SIGHUP's reload, unit by unit (the daemon-process test is test_signals.py): the settings
are read again by the start-up rules, applied all or nothing, and what needs a restart is
named."""

from __future__ import annotations

import logging

import pytest

from edgerank.errors import SettingsError
from edgerank.server.reload import Reloader
from edgerank.server.settings import load
from edgerank.server.transport import Token


def test_the_log_level_the_file_sets_is_applied_and_restart_settings_named(tmp_path):
    cfg = tmp_path / "edgerank.toml"
    token = tmp_path / "token"
    token.write_text("one\n")
    cfg.write_text(f'token_file = "{token}"\nlog_level = "info"\n')
    fresh = lambda: load({}, env={}, config=cfg)  # noqa: E731 - what the CLI hands over
    reloader = Reloader(fresh(), Token("one"), None, fresh)
    root = logging.getLogger()
    before = root.level
    try:
        cfg.write_text(f'token_file = "{token}"\nlog_level = "debug"\nmax_documents = 7\n')
        line = reloader.reload()
        assert root.level == logging.DEBUG
        assert "token unchanged" in line and "log level debug" in line
        assert line.endswith("changed but applied only by a restart: max_documents")
    finally:
        root.setLevel(before)


def test_a_refused_reload_changes_nothing(tmp_path):
    cfg = tmp_path / "edgerank.toml"
    token = tmp_path / "token"
    token.write_text("one\n")
    cfg.write_text(f'token_file = "{token}"\n')
    fresh = lambda: load({}, env={}, config=cfg)  # noqa: E731
    live = Token("one")
    reloader = Reloader(fresh(), live, None, fresh)
    cfg.write_text(f'token_file = "{token}"\nlog_levl = "debug"\n')  # a typo: refused whole
    with pytest.raises(SettingsError, match="did you mean 'log_level'"):
        reloader.reload()
    cfg.write_text(f'token_file = "{token}"\ntls_cert = "/c"\ntls_key = "/k"\n')
    token.write_text("two\n")
    with pytest.raises(SettingsError, match="TLS turned on: that needs a restart"):
        reloader.reload()
    assert live.value == b"one"  # the new token was not swapped in with a refused reload
    cfg.write_text(f'token_file = "{token}"\n')
    assert reloader.reload() == "reloaded: token changed"
    assert live.ok("Bearer two") and not live.ok("Bearer one")
