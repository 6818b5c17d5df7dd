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

"""``openstack backup image save|restore``"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from osc_lib.cli import parseractions

from osc_backup import command
from osc_backup.i18n import _

LOG = logging.getLogger(__name__)

#: Output fields of ``backup image save`` (stable: public API).
SAVE_COLUMNS = (
    'image_id',
    'name',
    'file',
    'size',
    'hash_algo',
    'hash_value',
    'verified',
    'manifest',
    'checksum_file',
    'resumed_from',
    'retries',
    'duration',
    'throughput_mib_s',
)

#: Output fields of ``backup image restore`` (stable: public API).
RESTORE_COLUMNS = (
    'image_id',
    'name',
    'status',
    'size',
    'disk_format',
    'container_format',
    'os_hash_algo',
    'os_hash_value',
    'checksum',
    'verified',
    'source_image_id',
    'manifest',
    'encryption_key_id',
    'previous_encryption_key_id',
    'duration',
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError('must be 0 or more')
    return value


class SaveImage(command.ShowOne):
    _description = _(
        "Download an image into a verified local backup set\n\n"
        "The set is written in a hidden .<file>.partial directory in the "
        "target folder: the data, checked against the hash Glance recorded "
        "(os_hash_algo/os_hash_value, else the md5 checksum) while it "
        "arrives, the key of an encrypted volume's image when it can be "
        "read, the manifest and the checksum file, all fsynced; only then "
        "are they renamed to their final names. Next to the data go "
        "<file>.manifest.json (the image's formats, properties and hashes, "
        "for 'backup image restore') and <file>.<algo> (e.g. "
        "<file>.sha512: Glance's hash of the data, and the manifest's), "
        "which '<algo>sum -c' checks without osc-backup. Files are created "
        "mode 0600, new directories 0700; an existing file is only "
        "replaced with --overwrite, never written through a symbolic "
        "link.\n\n"
        "An interrupted download is resumed by running the same command "
        "again; transient network errors are retried."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'image',
            metavar='<image>',
            help=_('Image to save (name or ID)'),
        )
        where = parser.add_mutually_exclusive_group()
        where.add_argument(
            '--file',
            metavar='<path>',
            help=_('Write the image data to this file'),
        )
        where.add_argument(
            '--dir',
            metavar='<directory>',
            help=_(
                'Write the backup set into this directory (created if '
                'missing), named <image name>-<ID prefix>.<disk format>. '
                'Default: the current directory'
            ),
        )
        parser.add_argument(
            '--overwrite',
            '--force',
            dest='overwrite',
            action='store_true',
            help=_('Replace an existing backup set of the same name'),
        )
        parser.add_argument(
            '--keep-partial',
            action='store_true',
            help=_(
                'When the data does not verify, keep it as '
                '<file>.unverified for inspection instead of deleting it'
            ),
        )
        parser.add_argument(
            '--no-resume',
            dest='resume',
            action='store_false',
            help=_(
                'Start from the beginning even when an earlier run left a '
                'partial download of this image'
            ),
        )
        parser.add_argument(
            '--retries',
            metavar='<count>',
            type=_positive_int,
            default=5,
            help=_(
                'Retry transient errors (connection reset, 5xx) this many '
                'times in a row, with a growing pause (default: 5)'
            ),
        )
        parser.add_argument(
            '--allow-unverified',
            action='store_true',
            help=_(
                'Save an image that has no hash at all (it cannot be '
                'verified; the sha512 of what arrived is recorded)'
            ),
        )
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import transfer
        from osc_backup.procedures import image_save

        if parsed_args.file:
            target, as_file = parsed_args.file, True
        else:
            target, as_file = parsed_args.dir or '.', False
        saved = image_save.save_image(
            self.connection(),
            parsed_args.image,
            target,
            as_file=as_file,
            overwrite=parsed_args.overwrite,
            keep_partial=parsed_args.keep_partial,
            resume=parsed_args.resume,
            allow_unverified=parsed_args.allow_unverified,
            reporter=self.reporter(parsed_args),
            options=transfer.TransferOptions(retries=parsed_args.retries),
        )
        row = {
            'image_id': saved.image_id,
            'name': saved.name,
            'file': saved.file,
            'size': saved.size,
            'hash_algo': saved.hash_algo,
            'hash_value': saved.hash_value,
            'verified': saved.verified,
            'manifest': saved.manifest,
            'checksum_file': saved.checksum_file,
            'resumed_from': saved.resumed_from,
            'retries': saved.retries,
            'duration': round(saved.duration, 1),
            'throughput_mib_s': round(saved.throughput / transfer.MiB, 1),
        }
        return SAVE_COLUMNS, [row[c] for c in SAVE_COLUMNS]


class RestoreImage(command.ShowOne):
    _description = _(
        "Upload a saved backup set back to the Image service\n\n"
        "The image gets the recorded disk and container format, min_disk, "
        "min_ram, tags and properties (not those Glance sets itself, such "
        "as id, owner, status or hashes). Before anything is created the "
        "set is validated (manifest format and fields, file names inside "
        "the set's directory, checksum file) and the data file checked "
        "against it; a bad set is one error and nothing is created. The "
        "hash Glance computes is compared with the one recorded; on a "
        "mismatch the new image is deleted.\n\n"
        "The key of an encrypted volume's image is stored again in "
        "Barbican (a new ID) and deleted with the image. A key given with "
        "--property cinder_encryption_key_id=<secret> is used as it is and "
        "the image gets cinder_encryption_key_deletion_policy="
        "do_not_delete: deleting the image never deletes it."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'source',
            metavar='<manifest-or-file>',
            help=_(
                'The backup set: its <file>.manifest.json, or its data '
                'file with the manifest next to it'
            ),
        )
        parser.add_argument(
            '--name',
            metavar='<name>',
            help=_('Name of the new image (default: the recorded name)'),
        )
        parser.add_argument(
            '--property',
            metavar='<key=value>',
            action=parseractions.KeyValueAction,
            dest='properties',
            default={},
            help=_(
                'Set a property on the new image, overriding the recorded '
                'one (repeat option to set multiple properties)'
            ),
        )
        parser.add_argument(
            '--timeout',
            metavar='<seconds>',
            type=command.positive_float,
            default=3600.0,
            help=_(
                'Give up when the upload and the wait for the image to '
                'become active take longer than this many seconds '
                '(default: 3600); the new image is then deleted'
            ),
        )
        command.add_cleanup_timeout_arg(parser)
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from dataclasses import asdict

        from osc_backup.procedures import image_restore

        restored = image_restore.restore_image(
            self.connection(),
            parsed_args.source,
            name=parsed_args.name,
            properties=dict(parsed_args.properties or {}),
            timeout=parsed_args.timeout,
            reporter=self.reporter(parsed_args),
        )
        row = asdict(restored)
        return RESTORE_COLUMNS, [row[c] for c in RESTORE_COLUMNS]
