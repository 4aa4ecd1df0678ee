"""What every command shares: one-line errors with fixed exit codes."""

from __future__ import annotations

import functools
import os
import sys

import click

from edgerank.errors import EdgerankError

#: exit codes: 1 = the request or the model is wrong, 2 = usage (click's own, and input the
#: command cannot read: a documents file or stdin that is not UTF-8), 70 = a bug
EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL = 1, 2, 70


def fail(message: str, code: int) -> None:
    click.echo(f"edgerank: error: {message}", err=True)
    sys.exit(code)


def friendly(fn):
    """Domain errors become one line on stderr and exit 1; bugs one line and exit 70."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgerankError as exc:
            fail(str(exc), EXIT_ERROR)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except BrokenPipeError:  # `edgerank models | head`: the reader has gone, stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)  # 128 + SIGPIPE, as a shell reports a command a closed pipe ended
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence for the CLI
            if os.environ.get("EDGERANK_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            fail(
                f"internal error: {type(exc).__name__}: {first} (EDGERANK_DEBUG=1 shows more)",
                EXIT_INTERNAL,
            )

    return wrapper
