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
from osc_lib import exceptions

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
    'method_reason',
    'consistency',
    'encrypted',
    'encryption_key_id',
    'run_id',
    'duration',
    'files',
)

#: Output fields of ``backup volume create`` on the Cinder backup path.
BACKUP_COLUMNS = (
    'backup_id',
    'name',
    'status',
    'is_incremental',
    'container',
    'size',
    'source_volume_id',
    'source_volume_name',
    'method',
    'method_reason',
    'consistency',
    'encrypted',
    'encryption_key_id',
    'run_id',
    'duration',
)

#: Output fields of ``backup volume restore``.
RESTORE_COLUMNS = (
    'volume_id',
    'name',
    'status',
    'size',
    'volume_type',
    'bootable',
    'availability_zone',
    'source_kind',
    'source_id',
    'source_name',
    'source_volume_id',
    'restore_method',
    'encryption_key_id',
    'run_id',
    'duration',
)

#: Options that only the image path knows (name -> default).
IMAGE_ONLY = {
    'disk_format': ('--disk-format', 'raw'),
    'container_format': ('--container-format', 'bare'),
    'keep_temporary': ('--keep-temporary', False),
    'download': ('--download', None),
}

#: Options that only the Cinder backup path knows.
BACKUP_ONLY = {
    'incremental': ('--incremental', False),
    'container': ('--container', None),
    'availability_zone': ('--availability-zone', None),
}

DRY_RUN_COLUMNS = (
    'dry_run',
    'method',
    'method_reason',
    'source_volume_id',
    'source_volume_name',
    'source_volume_status',
    'consistency',
    'name',
    'steps',
)


class CreateVolumeBackup(command.ShowOne):
    _description = _(
        "Back up a volume with the Cinder Backup API or to a Glance image\n\n"
        "--via-backup makes a Cinder backup: an 'available' volume directly "
        "(offline, consistent data), an 'in-use' one with force "
        "(crash-consistent, not application-consistent). --incremental "
        "builds on the volume's latest backup; when the volume has no "
        "available backup yet, a full backup is made instead and the output "
        "says so. The backup's metadata records the volume type, size, "
        "bootable flag and source volume for 'backup volume restore'.\n\n"
        "--via-image uploads the volume to an image: an 'available' volume "
        "directly, an 'in-use' one through a temporary snapshot and volume "
        "that are deleted afterwards, also on failure and Ctrl-C "
        "(crash-consistent). The image is named osc-backup-tmp-<run>-image-"
        "of-<volume> until it is active and its record (osc_backup_* "
        "properties, replacing any it inherited) is written. --no-wait "
        "cannot be used for 'in-use' volumes "
        "on this path.\n\n"
        "Without --via-image or --via-backup, the Cinder backup path is "
        "taken when the cloud has a working backup service, else the image "
        "path; method_reason says "
        "which and why. Admins are answered by the services API. A plain "
        "member cannot list services: the backup is tried, and when Cinder "
        "rejects it for lack of a backup service the image path is taken. "
        "Cinder then keeps the rejected backup record (status error) and "
        "lets nobody delete it until a backup service runs; later automatic "
        "runs use that record to decide without creating anything, and "
        "delete it once a service is back. Cinder's scheduler keeps "
        "sending backups to a backup service that stopped after it "
        "reported; such a backup stays 'creating' (its volume "
        "'backing-up') until that service starts again. When no backup "
        "service has taken a backup within a minute, the command ends "
        "with an error that says so and what an admin can do. Members of "
        "such clouds should pass --via-image."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'volume',
            metavar='<volume>',
            help=_('Volume to back up (name or ID)'),
        )
        command.add_method_args(
            parser,
            _(
                'Back up to a Glance image (upload-to-image; in-use '
                'volumes through a temporary snapshot and volume)'
            ),
            _(
                'Back up with the Cinder Backup API (in-use volumes with '
                'force). Default: --via-backup when the cloud has a working '
                'backup service, else --via-image'
            ),
        )
        parser.add_argument(
            '--incremental',
            action='store_true',
            help=_(
                'Cinder backup only: an incremental backup on top of the '
                "volume's latest one (a full backup when there is none yet; "
                'the output says so)'
            ),
        )
        parser.add_argument(
            '--container',
            metavar='<container>',
            help=_(
                'Cinder backup only: the backup container (driver-defined)'
            ),
        )
        parser.add_argument(
            '--availability-zone',
            metavar='<availability-zone>',
            help=_(
                'Cinder backup only: availability zone of the backup '
                '(supported by --os-volume-api-version 3.51 or above)'
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
                'Set a property on the backup image, or metadata on the '
                'Cinder backup (supported by --os-volume-api-version 3.43 or '
                'above) (repeat option to set multiple properties); the '
                'osc_backup prefix is reserved for the backup record'
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
            '--download',
            metavar='<directory>',
            dest='download',
            help=_(
                'Image path only: also download the backup image into '
                '<directory>. A Cinder backup cannot leave the cloud through '
                'the API, so this cannot be combined with --via-backup'
            ),
        )
        parser.add_argument(
            '--keep-temporary',
            action='store_true',
            help=_(
                'Image path only: do not delete the temporary snapshot and '
                'volume (for debugging); the commands that remove them are '
                'printed'
            ),
        )
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import tags
        from osc_backup.common import volumes
        from osc_backup.procedures import volume_backup
        from osc_backup.procedures import volume_choice
        from osc_backup.procedures import volume_image

        conn = self.connection()
        method = parsed_args.method
        image_opts = _given(parsed_args, IMAGE_ONLY)
        backup_opts = _given(parsed_args, BACKUP_ONLY)
        if method == 'backup' and '--download' in image_opts:
            raise exceptions.CommandError(
                _(
                    '--download cannot be used with --via-backup: a Cinder '
                    'backup cannot leave the cloud through the API (only '
                    'its record can be exported, by an admin). Use '
                    '--via-image --download <directory> to get a copy of '
                    'the volume out of the cloud.'
                )
            )
        if image_opts and backup_opts:
            raise exceptions.CommandError(
                _('%(image)s only apply to the image path and %(backup)s '
                  'only to the Cinder backup path: they cannot be combined.')
                % {'image': ', '.join(image_opts),
                   'backup': ', '.join(backup_opts)}
            )
        if method == 'backup' and image_opts:
            raise exceptions.CommandError(
                _('%s only apply to the image path (--via-image).')
                % ', '.join(image_opts)
            )
        if method == 'image' and backup_opts:
            raise exceptions.CommandError(
                _('%s only apply to the Cinder backup path (--via-backup).')
                % ', '.join(backup_opts)
            )

        volume = volumes.find_volume(conn.block_storage, parsed_args.volume)
        run = tags.Run()
        choice = volume_choice.choose(
            conn, volume, method,
            image_only=image_opts, backup_only=backup_opts,
            availability_zone=parsed_args.availability_zone,
            probe=not parsed_args.dry_run,
        )
        image_options = volume_image.Options(
            name=parsed_args.name,
            description=parsed_args.description,
            disk_format=parsed_args.disk_format,
            container_format=parsed_args.container_format,
            properties=dict(parsed_args.properties or {}),
            wait=parsed_args.wait,
            timeout=parsed_args.timeout,
            keep_temporary=parsed_args.keep_temporary,
            download=parsed_args.download,
        )
        backup_options = volume_backup.Options(
            name=parsed_args.name,
            description=parsed_args.description,
            incremental=parsed_args.incremental,
            container=parsed_args.container,
            properties=dict(parsed_args.properties or {}),
            availability_zone=parsed_args.availability_zone,
            wait=parsed_args.wait,
            timeout=parsed_args.timeout,
        )
        if parsed_args.dry_run:
            if choice.method == 'backup':
                plan = volume_backup.plan(conn, volume, backup_options, run)
            else:
                plan = volume_image.plan(conn, volume, image_options, run)
            return _plan_output(plan, choice.reason)
        result = volume_choice.backup_volume(
            conn, volume, choice, image_options, backup_options,
            run=run, reporter=self.reporter(parsed_args),
        )
        if result['method'] == 'backup':
            return BACKUP_COLUMNS, [result.get(c) for c in BACKUP_COLUMNS]
        result['files'] = format_columns.ListColumn(result['files'])
        return IMAGE_COLUMNS, [result.get(c) for c in IMAGE_COLUMNS]


def _plan_output(
    result: dict[str, Any], reason: str
) -> tuple[Sequence[str], Iterable[Any]]:
    """A ``--dry-run`` plan of either method as ShowOne output."""
    result['steps'] = format_columns.ListColumn(result['steps'])
    result['method_reason'] = reason
    return DRY_RUN_COLUMNS, [result[c] for c in DRY_RUN_COLUMNS]


def _given(
    parsed_args: argparse.Namespace, options: dict[str, tuple[str, Any]]
) -> list[str]:
    """The options of ``options`` the user set (differ from default)."""
    return [
        flag
        for dest, (flag, default) in options.items()
        if getattr(parsed_args, dest, default) != default
    ]


class RestoreVolume(command.ShowOne):
    _description = _(
        "Restore a Cinder backup or a backup image into a volume\n\n"
        "From a Cinder backup: an empty volume of the recorded type and size "
        "(or --type) is created and the backup restored onto it; this also "
        "works for encrypted volume types that are not the default, where "
        "Cinder's own restore into a new volume fails. From an image made "
        "by 'backup volume create --via-image': a volume is created from the "
        "image with the recorded type, size and bootable flag.\n\n"
        "Overwriting an existing volume needs --volume <volume> --force, and "
        "that volume must be 'available'. A volume this command created is "
        "deleted again if the restore fails; until the restore is complete "
        "it is named osc-backup-tmp-<run>-restore-of-<name>, which 'backup "
        "cleanup' finds if the command is killed.\n\n"
        "--no-wait returns once Cinder has accepted the restore; the "
        "recorded bootable flag is then not set (a note says how)."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'source',
            metavar='<backup-or-image>',
            help=_(
                'Cinder backup or backup image to restore (name or ID)'
            ),
        )
        parser.add_argument(
            '--name',
            metavar='<name>',
            help=_(
                'Name of the new volume (default: the source volume name, '
                '"-restore-" and a UTC timestamp)'
            ),
        )
        parser.add_argument(
            '--description',
            metavar='<description>',
            help=_('Description of the new volume'),
        )
        parser.add_argument(
            '--type',
            metavar='<volume-type>',
            dest='volume_type',
            help=_(
                'Volume type of the new volume (name or ID; default: the '
                'type recorded with the backup)'
            ),
        )
        parser.add_argument(
            '--availability-zone',
            metavar='<availability-zone>',
            help=_('Availability zone of the new volume'),
        )
        parser.add_argument(
            '--volume',
            metavar='<volume>',
            help=_(
                "Overwrite this existing 'available' volume (name or ID) "
                'instead of creating one; needs --force'
            ),
        )
        parser.add_argument(
            '--force',
            action='store_true',
            help=_(
                'Confirm that --volume is overwritten (all its data is '
                'replaced)'
            ),
        )
        command.add_wait_args(parser, _('the volume is available'))
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import tags
        from osc_backup.procedures import volume_restore

        conn = self.connection()
        opts = volume_restore.Options(
            name=parsed_args.name,
            description=parsed_args.description,
            volume_type=parsed_args.volume_type,
            availability_zone=parsed_args.availability_zone,
            volume=parsed_args.volume,
            force=parsed_args.force,
            wait=parsed_args.wait,
            timeout=parsed_args.timeout,
        )
        source = volume_restore.find_source(conn, parsed_args.source)
        result = volume_restore.restore(
            conn, source, opts, run=tags.Run(),
            reporter=self.reporter(parsed_args),
        )
        return RESTORE_COLUMNS, [result.get(c) for c in RESTORE_COLUMNS]
