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
import os
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
    'mode',
    'skew',
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
    'mode',
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
        "This command first captures every disk together: for a server "
        "booted from a volume with one createImage call (Nova snapshots "
        "all its volumes in it, freezing the guest where it can; the "
        "image is deleted once the snapshot IDs are read), for an "
        "image-booted one with a snapshot of every volume requested at "
        "once, then createImage of the root disk; --pause pauses the "
        "server meanwhile. Then it backs up each attached volume from its "
        "snapshot with 'backup volume create' (--via-image, --via-backup, "
        "or the automatic choice), unless --no-volumes, and deletes the "
        "snapshots. The output lists every artifact with its consistency "
        "('offline' for a SHUTOFF server, 'app-consistent' with "
        "--quiesce, else 'crash-consistent'), the snapshot it was made "
        "from and when that was taken; 'mode' says how the disks were "
        "captured together and 'skew' the seconds between the first and "
        "the last. Each artifact records the server, device and boot index "
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
        together = parser.add_mutually_exclusive_group()
        together.add_argument(
            '--pause',
            action='store_true',
            help=_(
                'Pause the server (ACTIVE only) while its disks are '
                'captured, and unpause it then (also on failure and '
                'Ctrl-C): one crash-consistent point for all disks. Nova '
                "refuses the unpause while its snapshot task runs: for an "
                'image-booted server the pause lasts until the root disk '
                'image is uploaded'
            ),
        )
        together.add_argument(
            '--quiesce',
            action='store_true',
            help=_(
                "Require Nova to freeze the guest's file systems while it "
                'snapshots the volumes (a volume-booted ACTIVE server whose '
                'boot volume has the image properties hw_qemu_guest_agent='
                'yes and os_require_quiesce=yes, with the QEMU guest agent '
                'running): the result is app-consistent; refused otherwise'
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
                'Keep the temporary snapshots (those of the capture, '
                "Nova's included) and the temporary volumes of the image "
                'path (for debugging); the commands that remove them are '
                'printed'
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
            pause=parsed_args.pause,
            quiesce=parsed_args.quiesce,
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
                'mode': plan.mode,
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


#: Output fields of ``backup server restore`` (stable: public API).
RESTORE_COLUMNS = (
    'server_id',
    'server_name',
    'server_status',
    'volume_backed',
    'flavor',
    'image_id',
    'volumes',
    'uploaded',
    'bytes',
    'restored_from',
    'source_run_id',
    'source_server_id',
    'notes',
    'run_id',
    'duration',
)

RESTORE_DRY_RUN_COLUMNS = (
    'dry_run',
    'restored_from',
    'source_run_id',
    'source_server_id',
    'volume_backed',
    'server_name',
    'flavor',
    'notes',
    'steps',
)


def _volume_type_map(text: str) -> tuple[str, str]:
    """argparse type for --volume-type OLD=NEW."""
    old, sep, new = text.partition('=')
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not <recorded-type>=<type>"
        )
    return old, new


class RestoreServer(command.ShowOne):
    _description = _(
        "Restore a server from a server backup\n\n"
        "From a run of 'backup server create' in this project (its run "
        "ID, or --latest <server>): the server is created again from the "
        "root disk image (image-booted) or from its boot volume restored "
        "from its backup or image (volume-booted); every other volume is "
        "restored as 'backup volume restore' does (recorded type, size, "
        "bootable flag) and attached in the recorded device order.\n\n"
        "From a directory written by 'backup server create --download' "
        "(also in another project or cloud): the server manifest and every "
        "backup set are validated, each image is uploaded (the keys of "
        "encrypted volumes are stored again), then the same. The images "
        "uploaded for volumes are deleted once the volumes exist; the root "
        "disk image stays (the server boots from it).\n\n"
        "The recorded flavor, key pair, availability zone, metadata and "
        "networks are used unless overridden; one that does not exist "
        "here is refused before anything is created, naming the option "
        "that chooses another. The new server carries the metadata "
        "osc_backup_restored_from=run:<run ID>. A failure or Ctrl-C "
        "removes everything this command created (or names what is left "
        "and the commands that remove it). Until the server is ACTIVE with "
        "every volume attached, the server, volumes and uploaded images "
        "have the run's temporary names (osc-backup-tmp-<run>-...); then "
        "they get their final names, the server last. What a killed "
        "restore leaves, 'backup cleanup --run-id <run>' removes."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'source',
            metavar='<run-id|directory>',
            nargs='?',
            help=_(
                "Run ID printed by 'backup server create', or a directory "
                "it wrote with --download (or the server manifest in it)"
            ),
        )
        parser.add_argument(
            '--latest',
            metavar='<server>',
            help=_(
                'Restore the newest complete server backup of <server> in '
                'this project (the ID or name it had; it may be gone)'
            ),
        )
        parser.add_argument(
            '--name',
            metavar='<name>',
            help=_('Name of the new server (default: the recorded name)'),
        )
        parser.add_argument(
            '--flavor',
            metavar='<flavor>',
            help=_('Flavor (name or ID; default: the recorded flavor)'),
        )
        key = parser.add_mutually_exclusive_group()
        key.add_argument(
            '--key-name',
            metavar='<key-name>',
            help=_('Key pair (default: the recorded key pair)'),
        )
        key.add_argument(
            '--no-key-name',
            action='store_true',
            help=_('No key pair, even if one was recorded'),
        )
        parser.add_argument(
            '--availability-zone',
            metavar='<zone-name>',
            help=_(
                'Availability zone of the server (default: the recorded '
                'zone)'
            ),
        )
        parser.add_argument(
            '--network',
            metavar='<network>',
            action='append',
            default=[],
            help=_(
                'Attach the server to this network (name or ID) (repeat '
                'option to set multiple networks; default: the recorded '
                'networks)'
            ),
        )
        parser.add_argument(
            '--nic',
            metavar='<net-id=net-uuid,v4-fixed-ip=ip-addr,'
            'v6-fixed-ip=ip-addr,port-id=port-uuid,tag=tag,'
            'auto,none>',
            action='append',
            default=[],
            help=_(
                "A network interface, as 'server create' takes it; 'none' "
                "for no network, 'auto' to let Nova choose (repeat option "
                'to set multiple interfaces; default: the recorded '
                'networks)'
            ),
        )
        parser.add_argument(
            '--volume-type',
            metavar='<recorded-type>=<type>',
            type=_volume_type_map,
            action='append',
            default=[],
            help=_(
                'Restore the volumes of the recorded type <recorded-type> '
                'as volumes of type <type> (repeat option to map several '
                'types)'
            ),
        )
        command.add_timeout_arg(parser)
        parser.add_argument(
            '--dry-run',
            action='store_true',
            help=_(
                'Check the backup and the target and print the planned '
                'steps; create nothing'
            ),
        )
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import errors
        from osc_backup.common import tags
        from osc_backup.procedures import server_restore

        if bool(parsed_args.source) == bool(parsed_args.latest):
            raise errors.InvalidInput(
                'Give either a run ID or directory, or --latest <server>.'
            )
        opts = server_restore.Options(
            name=parsed_args.name,
            flavor=parsed_args.flavor,
            key_name=parsed_args.key_name,
            no_key_name=parsed_args.no_key_name,
            availability_zone=parsed_args.availability_zone,
            nics=server_restore.nics_option(
                parsed_args.nic, parsed_args.network
            ),
            volume_types=dict(parsed_args.volume_type),
            timeout=parsed_args.timeout,
        )
        source = parsed_args.source
        if source and (os.path.isdir(source) or os.path.isfile(source)):
            recorded = server_restore.from_directory(source)
            conn = self.connection()
        else:
            conn = self.connection()
            if parsed_args.latest:
                recorded = server_restore.latest_run(
                    conn, parsed_args.latest
                )
            else:
                recorded = server_restore.from_run(conn, source)
        run = tags.Run()
        reporter = self.reporter(parsed_args)
        plan = server_restore.prepare(
            conn, recorded, opts, run, reporter=reporter
        )
        if parsed_args.dry_run:
            data = {
                'dry_run': True,
                'restored_from': recorded.origin,
                'source_run_id': recorded.run_id,
                'source_server_id': recorded.server_id,
                'volume_backed': recorded.volume_backed,
                'server_name': plan.name,
                'flavor': plan.flavor.name,
                'notes': format_columns.ListColumn(plan.notes),
                'steps': format_columns.ListColumn(
                    server_restore.plan_steps(plan)
                ),
            }
            return RESTORE_DRY_RUN_COLUMNS, [
                data[c] for c in RESTORE_DRY_RUN_COLUMNS
            ]
        result = server_restore.restore_server(
            conn, plan, run=run, reporter=reporter,
            timeout=parsed_args.timeout,
        )
        for key in ('volumes', 'uploaded'):
            result[key] = format_columns.ListDictColumn(result[key])
        result['notes'] = format_columns.ListColumn(result['notes'])
        return RESTORE_COLUMNS, [result.get(c) for c in RESTORE_COLUMNS]
