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

"""``openstack backup volume ...``"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from osc_lib.cli import format_columns
from osc_lib.cli import parseractions

from osc_backup import command
from osc_backup.i18n import _

LOG = logging.getLogger(__name__)

#: Output fields of ``backup volume create`` (stable: public API).
IMAGE_COLUMNS = (
    'image_id',
    'name',
    'status',
    'size',
    'disk_format',
    'container_format',
    'checksum',
    'os_hash_algo',
    'os_hash_value',
    'source_volume_id',
    'source_volume_name',
    'method',
    'consistency',
    'encrypted',
    'run_id',
    'duration',
)

DRY_RUN_COLUMNS = (
    'dry_run',
    'method',
    'source_volume_id',
    'source_volume_name',
    'source_volume_status',
    'consistency',
    'name',
    'steps',
)


class CreateVolumeBackup(command.ShowOne):
    _description = _(
        "Back up a volume to a Glance image\n\n"
        "An 'available' volume is uploaded to an image directly (offline, "
        "consistent data). An 'in-use' volume is snapshotted, the snapshot "
        "copied to a temporary volume, and that volume uploaded; the "
        "temporary snapshot and volume are deleted afterwards, also on "
        "failure and Ctrl-C. Such a backup is crash-consistent, not "
        "application-consistent.\n\n"
        "--no-wait returns once Cinder has accepted the upload of an "
        "'available' volume; the image then becomes 'active' by itself. It "
        "cannot be used for 'in-use' volumes: the temporary resources can "
        "only be deleted after the upload has finished."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'volume',
            metavar='<volume>',
            help=_('Volume to back up (name or ID)'),
        )
        method = parser.add_mutually_exclusive_group()
        method.add_argument(
            '--via-image',
            dest='method',
            action='store_const',
            const='image',
            default='image',
            help=_(
                'Back up to a Glance image (upload-to-image; in-use '
                'volumes through a temporary snapshot and volume). '
                'This is the default'
            ),
        )
        parser.add_argument(
            '--name',
            metavar='<name>',
            help=_(
                'Name of the backup image (default: the volume name, '
                '"-backup-" and a UTC timestamp)'
            ),
        )
        parser.add_argument(
            '--description',
            metavar='<description>',
            help=_('Description of the backup (image property description)'),
        )
        parser.add_argument(
            '--disk-format',
            metavar='<disk-format>',
            choices=('raw', 'qcow2', 'vmdk', 'vdi', 'vhd', 'vhdx'),
            default='raw',
            help=_(
                'Disk format of the image: raw, qcow2, vmdk, vdi, vhd or '
                'vhdx (default: raw; encrypted volumes: raw only)'
            ),
        )
        parser.add_argument(
            '--container-format',
            metavar='<container-format>',
            choices=('bare', 'ovf', 'ova', 'docker', 'compressed'),
            default='bare',
            help=_(
                'Container format of the image: bare, ovf, ova, docker or '
                'compressed (default: bare; encrypted volumes: bare only)'
            ),
        )
        parser.add_argument(
            '--property',
            metavar='<key=value>',
            action=parseractions.KeyValueAction,
            dest='properties',
            default={},
            help=_(
                'Set a property on the backup image (repeat option to set '
                'multiple properties); keys starting with osc_backup_ are '
                'reserved'
            ),
        )
        command.add_wait_args(
            parser, _('the backup is complete and temporaries are removed')
        )
        parser.add_argument(
            '--dry-run',
            action='store_true',
            help=_(
                'Check the volume and print the planned steps and API calls; '
                'create nothing'
            ),
        )
        parser.add_argument(
            '--keep-temporary',
            action='store_true',
            help=_(
                'Do not delete the temporary snapshot and volume (for '
                'debugging); the commands that remove them are printed'
            ),
        )
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import tags
        from osc_backup.common import volumes
        from osc_backup.procedures import volume_image

        conn = self.connection()
        opts = volume_image.Options(
            name=parsed_args.name,
            description=parsed_args.description,
            disk_format=parsed_args.disk_format,
            container_format=parsed_args.container_format,
            properties=dict(parsed_args.properties or {}),
            wait=parsed_args.wait,
            timeout=parsed_args.timeout,
            keep_temporary=parsed_args.keep_temporary,
        )
        volume = volumes.find_volume(conn.block_storage, parsed_args.volume)
        run = tags.Run()
        if parsed_args.dry_run:
            result = volume_image.plan(conn, volume, opts, run)
            result['steps'] = format_columns.ListColumn(result['steps'])
            return DRY_RUN_COLUMNS, [result[c] for c in DRY_RUN_COLUMNS]
        result = volume_image.backup_volume_via_image(
            conn, volume, opts, run=run, reporter=self.reporter(parsed_args)
        )
        return IMAGE_COLUMNS, [result.get(c) for c in IMAGE_COLUMNS]
