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

Commands stay thin: parse, call a procedure, format. Procedures raise
:class:`osc_backup.common.errors.BackupError`; the bases turn it into
``CommandError`` so the user gets one clear message and a non-zero exit.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from osc_lib import exceptions
from osc_lib.command import command

from osc_backup.common import errors
from osc_backup.common.progress import Reporter


class _Base:
    app: Any

    def connection(self) -> Any:
        """The openstacksdk Connection osc-lib built (auth, region...)."""
        return self.app.client_manager.sdk_connection

    def reporter(self, parsed_args: argparse.Namespace) -> Reporter:
        """Progress on stderr, only on a terminal and unless --quiet."""
        stderr = self.app.stderr
        level = getattr(getattr(self.app, 'options', None), 'verbose_level', 1)
        isatty = getattr(stderr, 'isatty', None)
        progress = bool(isatty and isatty()) and level != 0
        return Reporter(stream=stderr, progress=progress)


class ShowOne(_Base, command.ShowOne):
    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        try:
            return self.backup_action(parsed_args)
        except errors.BackupError as exc:
            raise exceptions.CommandError(str(exc)) from exc

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        raise NotImplementedError


class Lister(_Base, command.Lister):
    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        try:
            return self.backup_action(parsed_args)
        except errors.BackupError as exc:
            raise exceptions.CommandError(str(exc)) from exc

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        raise NotImplementedError


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
    """--timeout, for verbs that always wait (and inside add_wait_args)."""
    parser.add_argument(
        '--timeout',
        metavar='<seconds>',
        type=positive_float,
        default=3600.0,
        help='Give up when the whole run takes longer than this many '
        'seconds (default: 3600); temporary resources are still removed',
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
