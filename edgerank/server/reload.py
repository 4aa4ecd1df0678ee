"""SIGHUP: reload what rotates on disk, never what is serving.

`systemctl reload edgerank` (ExecReload= in the unit) and logrotate-style tools send SIGHUP.
The daemon then reads its settings again, by the same rules as at start-up (the same flags,
the environment, the settings file), and applies what may change under live traffic:

- the bearer token (a rotated `token_file`, or a new `token`): calls from then on are
  checked against it; calls already admitted are never looked at again;
- the TLS certificate and key (renewed files, or new paths): new handshakes get them,
  connections already open keep theirs;
- the log level.

A reload is all or nothing: an empty or unreadable token file, a key that does not match its
certificate, a settings file that no longer parses leave everything as it was, and the one
log line says why. Other settings that changed need a restart, and the line names them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields, replace

from edgerank.errors import SettingsError
from edgerank.server.settings import Settings
from edgerank.server.transport import TlsPair, Token, tls_files

log = logging.getLogger(__name__)

#: the settings a reload applies; any other one that changed waits for a restart
RELOADED = ("token", "token_file", "tls_cert", "tls_key", "log_level")


class Reloader:
    """Holds the live token and TLS pair; `reload()` swaps them (both faces share them)."""

    def __init__(
        self,
        settings: Settings,
        token: Token,
        tls: TlsPair | None,
        fresh: Callable[[], Settings] | None = None,
    ):
        self.settings = settings
        self.token = token
        self.tls = tls
        #: the settings as they read now (None: the same ones, files read again)
        self._fresh = fresh

    def reload(self) -> str:
        """Apply the new token, TLS pair and log level; returns what changed, in words.
        Raises SettingsError (InvalidInput for TLS files), with nothing changed."""
        new = self._fresh() if self._fresh is not None else self.settings
        token = new.bearer_token()
        if bool(new.tls_cert) != (self.tls is not None):
            raise SettingsError(
                "TLS turned " + ("on" if new.tls_cert else "off") + ": that needs a restart"
            )
        if self.tls is not None:
            tls_files(new)  # checked whole before anything is swapped
        done = []
        if token.encode() != self.token.value:
            self.token.value = token.encode()
            done.append("token changed" if token else "token removed: TCP is open to all")
        else:
            done.append("token unchanged" if token else "no token")
        if self.tls is not None:
            changed = self.tls.reload(new.tls_cert, new.tls_key)
            done.append("TLS certificate " + ("changed" if changed else "unchanged"))
        if new.log_level != self.settings.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
            done.append(f"log level {new.log_level}")
        waiting = [
            f.name
            for f in fields(Settings)
            if f.name not in RELOADED and getattr(new, f.name) != getattr(self.settings, f.name)
        ]
        self.settings = replace(self.settings, **{name: getattr(new, name) for name in RELOADED})
        line = "reloaded: " + ", ".join(done)
        if waiting:
            line += f"; changed but applied only by a restart: {', '.join(waiting)}"
        return line
