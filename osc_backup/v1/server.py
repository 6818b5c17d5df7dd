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

"""``openstack backup server ...``"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from osc_lib.cli import format_columns
from osc_lib.cli import parseractions

from osc_backup import command
from osc_backup.i18n import _

#: Output fields of ``backup server create`` (stable: public API).
COLUMNS = (
    'server_id',
    'server_name',
    'server_status',
    'volume_backed',
    'consistency',
    'artifacts',
    'skipped_volumes',
    'method_reason',
    'notes',
    'manifest',
    'files',
    'run_id',
    'duration',
)

DRY_RUN_COLUMNS = (
    'dry_run',
    'server_id',
    'server_name',
    'server_status',
    'volume_backed',
    'consistency',
    'notes',
    'steps',
)


class CreateServerBackup(command.ShowOne):
    _description = _(
        "Back up a server: its root disk and its attached volumes\n\n"
        "What Nova's createImage ('openstack server image create') does: "
        "for a server booted from an image it copies the root disk only "
        "(not the attached volumes, not the flavor's ephemeral disk or "
        "swap); for a server booted from a volume it makes a Cinder "
        "snapshot of each volume and an image with no data in it, which "
        "cannot leave the cloud.\n\n"
        "This command therefore uses createImage for the root disk of "
        "image-booted servers only, and backs up each attached volume with "
        "'backup volume create' (--via-image, --via-backup, or the "
        "automatic choice), unless --no-volumes. The output lists every "
        "artifact with its consistency: 'offline' for a SHUTOFF server, "
        "else 'crash-consistent' per disk, the disks taken one after "
        "another. Each artifact records the server, device and boot index "
        "(osc_backup_* properties or backup metadata); a server manifest "
        "(--manifest, or in the --download directory) records flavor, "
        "image, key pair, networks, security groups and every disk's "
        "artifact, for a restore. A disk that fails ends the run; the "
        "disks already backed up are kept and named."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'server',
            metavar='<server>',
            help=_('Server to back up (name or ID)'),
        )
        command.add_method_args(
            parser,
            _('Back up the attached volumes to Glance images'),
            _(
                'Back up the attached volumes with the Cinder Backup API. '
                'Default: --via-backup when the cloud has a working backup '
                'service, else --via-image (see backup volume create)'
            ),
        )
        parser.add_argument(
            '--no-volumes',
            dest='volumes',
            action='store_false',
            default=True,
            help=_(
                'Do not back up the attached volumes (only the root disk of '
                'a server booted from an image; the output says which '
                'volumes were left out)'
            ),
        )
        parser.add_argument(
            '--incremental',
            action='store_true',
            help=_(
                'Cinder backup only: incremental volume backups (a full one '
                'for a volume without a backup yet)'
            ),
        )
        parser.add_argument(
            '--container',
            metavar='<container>',
            help=_('Cinder backup only: the backup container'),
        )
        parser.add_argument(
            '--name',
            metavar='<name>',
            help=_(
                'Name of the root disk image; volume artifacts get '
                '<name>-<device> (default: the server or volume name, '
                '"-backup-" and a UTC timestamp)'
            ),
        )
        parser.add_argument(
            '--description',
            metavar='<description>',
            help=_('Description of every artifact'),
        )
        parser.add_argument(
            '--property',
            metavar='<key=value>',
            action=parseractions.KeyValueAction,
            dest='properties',
            default={},
            help=_(
                'Set a property on every artifact (image property or backup '
                'metadata) (repeat option to set multiple properties); the '
                'osc_backup prefix is reserved for the backup record'
            ),
        )
        parser.add_argument(
            '--download',
            metavar='<directory>',
            help=_(
                'Also download every image into <directory> as backup sets '
                '(volumes then take the image path), and write the server '
                'manifest there'
            ),
        )
        parser.add_argument(
            '--manifest',
            metavar='<file>',
            help=_(
                'Write the server manifest (JSON) to <file>; never '
                'overwrites (default: into the --download directory, else '
                'none)'
            ),
        )
        command.add_timeout_arg(parser)
        parser.add_argument(
            '--keep-temporary',
            action='store_true',
            help=_(
                'Image path only: keep the temporary snapshots and volumes '
                'of in-use volumes (for debugging); the commands that remove '
                'them are printed'
            ),
        )
        parser.add_argument(
            '--dry-run',
            action='store_true',
            help=_(
                'Check the server and its volumes and print the planned '
                'steps; create nothing'
            ),
        )
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import tags
        from osc_backup.procedures import server_backup
        from osc_backup.procedures import server_plan

        conn = self.connection()
        opts = server_plan.Options(
            method=parsed_args.method,
            volumes=parsed_args.volumes,
            name=parsed_args.name,
            description=parsed_args.description,
            properties=dict(parsed_args.properties or {}),
            incremental=parsed_args.incremental,
            container=parsed_args.container,
            timeout=parsed_args.timeout,
            keep_temporary=parsed_args.keep_temporary,
            download=parsed_args.download,
            manifest=parsed_args.manifest,
        )
        run = tags.Run()
        server = server_plan.find_server(conn, parsed_args.server)
        plan = server_plan.prepare(
            conn, server, opts, run, probe=not parsed_args.dry_run
        )
        if parsed_args.dry_run:
            data = {
                'dry_run': True,
                'server_id': server.id,
                'server_name': server.name,
                'server_status': server.status,
                'volume_backed': plan.volume_backed,
                'consistency': plan.consistency,
                'notes': format_columns.ListColumn(plan.notes),
                'steps': format_columns.ListColumn(
                    server_plan.plan_steps(plan, opts, run)
                ),
            }
            return DRY_RUN_COLUMNS, [data[c] for c in DRY_RUN_COLUMNS]
        result = server_backup.backup_server(
            conn, plan, opts, run=run, reporter=self.reporter(parsed_args)
        )
        result['artifacts'] = format_columns.ListDictColumn(
            result['artifacts']
        )
        for key in ('skipped_volumes', 'notes', 'files'):
            result[key] = format_columns.ListColumn(result[key])
        return COLUMNS, [result.get(c) for c in COLUMNS]
