#   Licensed under the Apache License, Version 2.0 (the "License"); you may
#   not use this file except in compliance with the License. You may obtain
#   a copy of the License at
#
#        http://www.apache.org/licenses/LICENSE-2.0
#
#   Unless required by applicable law or agreed to in writing, software
#   distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#   WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#   License for the specific language governing permissions and limitations
#   under the License.

"""Typed command bases for osc-backup (after OSC's ``command.py``).

Commands stay thin: parse, call a procedure, format. The bases are the one
place that:

* turns errors into one clear line on stderr and a non-zero exit: a
  procedure's :class:`~osc_backup.common.errors.BackupError`, and any
  error of openstacksdk or keystoneauth that escaped it (an HTTP error,
  a lost connection, a timed-out request), never a traceback;
* ends an interrupted run with 130 (SIGINT) or 143 (SIGTERM), after the
  cleanup stack has done (or, on a second signal, listed) its work;
* bounds every API call: the connection's requests get
  :data:`DEFAULT_API_TIMEOUT` unless the user configured ``api_timeout``
  (clouds.yaml, or ``OS_API_TIMEOUT`` for a cloud given by ``OS_*``
  variables). Image data transfers pass their own per-read timeouts and
  are not cut short by it;
* applies ``--cleanup-timeout`` to every cleanup stack the verb makes;
* escapes control characters in the formatted result (table, value,
  shell, csv; JSON and YAML escape them themselves).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from cliff import columns as cliff_columns
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc
from osc_lib import exceptions
from osc_lib.command import command

from osc_backup.common import cleanup
from osc_backup.common import errors
from osc_backup.common.progress import Reporter
from osc_backup.common.text import printable, printable_lines

#: seconds one API request may take (connect, and each wait for data),
#: unless the user configured ``api_timeout``; a stalled request then ends
#: in an error instead of hanging the command
DEFAULT_API_TIMEOUT = 60.0

#: output formats that escape control characters themselves
_SELF_ESCAPING = ('json', 'yaml')


def bound_api_calls(conn: Any, seconds: float | None = None) -> Any:
    """Give ``conn``'s requests a timeout unless the user set one.

    osc-lib builds the keystoneauth session with the cloud's
    ``api_timeout`` (None when not configured: no timeout at all). The
    session is shared by every service proxy of the connection, and a
    request that passes its own ``timeout`` (the image data transfers do)
    keeps it. Returns the timeout in effect.
    """
    if seconds is None:
        seconds = DEFAULT_API_TIMEOUT
    session = getattr(conn, 'session', None)
    if session is None:
        return None
    if getattr(session, 'timeout', None) is None:
        session.timeout = seconds
    return session.timeout


def _escaped(value: Any) -> Any:
    """``value`` with control characters escaped in every string in it."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, cliff_columns.FormattableColumn):
        return type(value)(_escaped(value.machine_readable()))
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_escaped(v) for v in value)
    return value


class _Base:
    app: Any

    def connection(self) -> Any:
        """The openstacksdk Connection osc-lib built (auth, region...),
        with a finite timeout on every API call."""
        conn = self.app.client_manager.sdk_connection
        bound_api_calls(conn)
        return conn

    def reporter(self, parsed_args: argparse.Namespace) -> Reporter:
        """Progress on stderr, only on a terminal and unless --quiet."""
        stderr = self.app.stderr
        level = getattr(getattr(self.app, 'options', None), 'verbose_level', 1)
        isatty = getattr(stderr, 'isatty', None)
        progress = bool(isatty and isatty()) and level != 0
        return Reporter(stream=stderr, progress=progress)

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        raise NotImplementedError

    def _run(
        self, parsed_args: argparse.Namespace, rows: bool
    ) -> tuple[Sequence[str], Any]:
        """backup_action, with errors and signals turned into exits."""
        try:
            with cleanup.default_timeout(
                getattr(parsed_args, 'cleanup_timeout', None)
            ):
                columns, data = self.backup_action(parsed_args)
                # a Lister's rows may be a generator: run it here, where
                # its errors are handled
                data = [list(r) for r in data] if rows else list(data)
        except errors.BackupError as exc:
            raise exceptions.CommandError(printable_lines(exc)) from exc
        except (sdk_exc.SDKException, ks_exc.ClientException) as exc:
            raise exceptions.CommandError(errors.describe(exc)) from exc
        except KeyboardInterrupt as exc:
            signame = getattr(exc, 'signame', 'SIGINT')
            self.app.stderr.write(f'Interrupted by {signame}.\n')
            self.app.stderr.flush()
            code = getattr(exc, 'exit_code', 130)
            raise SystemExit(code) from exc
        if getattr(parsed_args, 'formatter', None) not in _SELF_ESCAPING:
            data = _escaped(data)
        return columns, data


class ShowOne(_Base, command.ShowOne):
    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        return self._run(parsed_args, rows=False)


class Lister(_Base, command.Lister):
    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        return self._run(parsed_args, rows=True)


class ExitCode:
    """A Lister that prints its table and still exits non-zero: set
    ``exit_code`` in ``backup_action`` (mix in before the base)."""

    exit_code = 0

    def run(self, parsed_args: argparse.Namespace) -> int:
        code = super().run(parsed_args)  # type: ignore[misc]
        return self.exit_code or int(code or 0)


def whole_number(text: str, minimum: int, what: str = 'a whole number') -> int:
    """argparse helper: ``text`` as an int of at least ``minimum``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f'must be {minimum} or more')
    return value


def positive_float(text: str) -> float:
    """argparse type for --timeout."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number")
    if value <= 0:
        raise argparse.ArgumentTypeError('must be greater than 0')
    return value


def add_wait_args(parser: argparse.ArgumentParser, what: str) -> None:
    """--no-wait and --timeout, the same on every verb.

    Waiting is the default (a backup is only a backup once it is complete,
    and temporaries can only be removed then), so there is no ``--wait``:
    unlike OSC's opt-in ``--wait``, it could only ever do nothing.
    """
    parser.add_argument(
        '--no-wait',
        dest='wait',
        action='store_false',
        default=True,
        help=f'Return as soon as the cloud has accepted the request, where '
        f'the procedure allows it (see the command description); by '
        f'default the command waits until {what}',
    )
    add_timeout_arg(parser)


def add_timeout_arg(parser: argparse.ArgumentParser) -> None:
    """--timeout, for verbs that always wait (and inside add_wait_args),
    and --cleanup-timeout with it."""
    add_plain_timeout_arg(
        parser,
        'Give up when the whole run takes longer than this many '
        'seconds (default: 3600); temporary resources are still removed',
    )
    add_cleanup_timeout_arg(parser)


def add_plain_timeout_arg(parser: argparse.ArgumentParser, text: str) -> None:
    """--timeout alone (seconds, default 3600), with the verb's help."""
    parser.add_argument(
        '--timeout',
        metavar='<seconds>',
        type=positive_float,
        default=3600.0,
        help=text,
    )


def add_cleanup_timeout_arg(parser: argparse.ArgumentParser) -> None:
    """--cleanup-timeout, for every verb that creates something it may
    have to remove (inside add_timeout_arg)."""
    parser.add_argument(
        '--cleanup-timeout',
        metavar='<seconds>',
        type=positive_float,
        default=cleanup.DEFAULT_TIMEOUT,
        help='Wait at most this many seconds for each removal of a '
        'temporary or incomplete resource (default: '
        f'{cleanup.DEFAULT_TIMEOUT:g}); what is not gone by then is '
        'listed with the command that removes it. A second Ctrl-C stops '
        'all waiting at once',
    )


def add_method_args(
    parser: argparse.ArgumentParser, image_help: str, backup_help: str
) -> None:
    """--via-image | --via-backup into ``method`` (default 'auto')."""
    method = parser.add_mutually_exclusive_group()
    method.add_argument(
        '--via-image',
        dest='method',
        action='store_const',
        const='image',
        default='auto',
        help=image_help,
    )
    method.add_argument(
        '--via-backup',
        dest='method',
        action='store_const',
        const='backup',
        help=backup_help,
    )
