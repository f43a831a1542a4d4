"""The command-line boundary both programs share: every failure is one line with its exit status.

:class:`OneLineArgumentParser` reports a usage error as one line and exit status 2 (flags must match
exactly).  :func:`cli_entry` wraps a command's ``main(argv)``:

=====================================================  ======  ==========================================
what                                                   exit    line on stderr
=====================================================  ======  ==========================================
bad input (:class:`~theory.plumbing.config.ConfigError`)  2    ``error: --flag: got X, expected Y``
the environment failed (:class:`EnvironmentFailure`,     1    ``error: <what failed>``
an ``OSError`` such as a read-only folder or a full disk,
``MemoryError``)
Ctrl-C (``KeyboardInterrupt``)                          130    ``error: interrupted``
=====================================================  ======  ==========================================

Nothing else is caught: a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from typing import Callable, NamedTuple, Sequence

from .config import ConfigError

__all__ = ["OneLineArgumentParser", "Command", "build_parser", "cli_entry", "EnvironmentFailure", "os_error_line"]


class EnvironmentFailure(RuntimeError):
    """Something outside the user's input failed (a device, a service, the file system); one line, exit 1."""


def os_error_line(err: OSError) -> str:
    """``<path>: <reason>`` for an ``OSError`` (both paths for a rename), without Python's ``[Errno N]``."""
    reason = err.strerror or str(err) or type(err).__name__
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    return (" -> ".join(str(p) for p in paths) + ": " if paths else "") + reason


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2, and flags match exactly:
    argparse's default takes any unique prefix (``--ba 1`` would set ``--batch-size``), so a
    mistyped flag could silently set another field."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # noqa: D401
        self.exit(2, f"error: {self.prog}: {message}\n")


class Command(NamedTuple):
    """A subcommand: its one-line ``help``, ``add_arguments(parser)`` and ``handler(args) -> exit status``.
    Both programs list theirs in one plain dict ``COMMANDS`` (name -> Command) in their cli.py."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


def build_parser(prog: str, description: str, commands: dict[str, Command]) -> OneLineArgumentParser:
    """The program's parser: one subparser per entry of ``commands``; ``args.handler`` is its handler."""
    parser = OneLineArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineArgumentParser)
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(handler=command.handler)
    return parser


def _as_flag(err: ConfigError) -> str:
    """The message with a field name such as ``batch_size`` (or ``J``) written as its flag ``--batch-size``.

    Flags and TOML keys name the same fields, so every command-line error names the field one way.
    """
    msg, field = str(err), err.field or ""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", field) and msg.startswith(field + ":"):
        return "--" + field.replace("_", "-") + msg[len(field):]
    return msg


def cli_entry(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a command's ``main(argv)``: bad input exit 2, environment failures exit 1, Ctrl-C exit 130,
    each one line on stderr (see the module docstring)."""

    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except ConfigError as err:
            message, status = _as_flag(err), 2
        except KeyboardInterrupt:
            message, status = "interrupted", 130
        except EnvironmentFailure as err:
            message, status = str(err) or "the environment failed", 1
        except MemoryError:
            message, status = "out of memory (the machine could not give what the command needed)", 1
        except BrokenPipeError:  # e.g. piped into head: not an error of ours
            return 0
        except OSError as err:
            message, status = os_error_line(err), 1
        sys.stderr.write(f"error: {message.splitlines()[0]}\n")
        return status

    wrapped.__name__ = getattr(main, "__name__", "main")
    wrapped.__doc__ = main.__doc__
    return wrapped


