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

"""``openstack backup secret save``"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from osc_backup import command
from osc_backup.i18n import _

LOG = logging.getLogger(__name__)

#: Output fields of ``backup secret save --file`` (stable: public API).
SAVE_COLUMNS = (
    'secret_id',
    'href',
    'name',
    'secret_type',
    'content_type',
    'written',
    'file',
    'metadata_file',
    'size',
)


class SaveSecret(command.ShowOne):
    _description = _(
        "Save a Barbican secret's payload to a private file\n\n"
        "The payload is fetched with the secret's own content type, else "
        "as application/octet-stream, and written unchanged (binary-safe) "
        "to a new file of mode 0600: an existing file is never overwritten. "
        "<file>.metadata.json next to it records the name, secret type, "
        "algorithm, bit length, mode, content types, creation time and "
        "href. The payload never appears in logs, also not with --debug.\n\n"
        "Without --file the payload goes to stdout and nothing else is "
        "printed; a binary payload is not written to a terminal.\n\n"
        "--luks-passphrase writes the passphrase that opens the LUKS data "
        "of a Cinder encrypted volume (or of an image made from one) "
        "instead of the key: binascii.hexlify(key), as os-brick does. "
        "--legacy-passphrase writes the \"mangled\" form (hex digits "
        "without zero padding) that volumes made by old releases may use "
        "(os-brick bug 1633518)."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'secret',
            metavar='<secret>',
            help=_('Secret to save (name, ID or href)'),
        )
        parser.add_argument(
            '--file',
            metavar='<path>',
            help=_(
                'Write to this new file (mode 0600; never overwritten) and '
                'the metadata to <path>.metadata.json. Default: stdout'
            ),
        )
        what = parser.add_mutually_exclusive_group()
        what.add_argument(
            '--luks-passphrase',
            dest='written',
            action='store_const',
            const='luks-passphrase',
            default='payload',
            help=_(
                'Write the LUKS passphrase of a Cinder encrypted volume '
                '(hexlified key, as os-brick opens it) instead of the key'
            ),
        )
        what.add_argument(
            '--legacy-passphrase',
            dest='written',
            action='store_const',
            const='luks-passphrase-legacy',
            help=_(
                'Write the legacy "mangled" LUKS passphrase (os-brick bug '
                '1633518) instead of the key'
            ),
        )
        return parser

    def produce_output(
        self,
        parsed_args: argparse.Namespace,
        column_names: Sequence[str],
        data: Sequence[Any],
    ) -> int:
        # stdout carries the payload: print nothing else
        if not column_names:
            return 0
        return int(super().produce_output(parsed_args, column_names, data))

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.procedures import secrets

        stdout = getattr(self.app, 'stdout', None) or sys.stdout
        isatty = getattr(stdout, 'isatty', None)
        binary = getattr(stdout, 'buffer', None)
        saved = secrets.save_secret(
            self.connection(),
            parsed_args.secret,
            file=parsed_args.file,
            written=parsed_args.written,
            stdout=binary if parsed_args.file is None else None,
            stdout_isatty=bool(isatty and isatty()),
            reporter=self.reporter(parsed_args),
        )
        if parsed_args.file is None:
            return (), ()
        row = {
            'secret_id': saved.secret_id,
            'href': saved.href,
            'name': saved.name,
            'secret_type': saved.secret_type,
            'content_type': saved.content_type,
            'written': saved.written,
            'file': saved.file,
            'metadata_file': saved.metadata_file,
            'size': saved.size,
        }
        return SAVE_COLUMNS, [row[c] for c in SAVE_COLUMNS]
