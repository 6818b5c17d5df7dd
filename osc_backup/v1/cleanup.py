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

"""``openstack backup cleanup``"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from osc_backup import command
from osc_backup.i18n import _

COLUMNS = (
    'kind', 'id', 'name', 'what', 'status', 'run_id', 'created_at',
    'result', 'remove_command',
)
HEADERS = (
    'Kind', 'ID', 'Name', 'What', 'Status', 'Run ID', 'Created At',
    'Result', 'Remove Command',
)


def run_id_arg(text: str) -> str:
    """argparse type for --run-id: 12 lower-case hex digits."""
    from osc_backup.common import tags

    if not tags.is_run_id(text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a run ID (12 hexadecimal digits, as printed "
            'by every backup command)'
        )
    return text


class Cleanup(command.Lister):
    _description = _(
        "Remove what interrupted runs left behind\n\n"
        "Finds, in the current project, what an osc-backup run that was "
        "killed could not remove, and deletes it, waiting until it is "
        "gone: temporary volumes and snapshots, images of uploads that "
        "never got their record, Nova root snapshots of server runs that "
        "did not finish, the snapshots Nova's createImage made of a "
        "volume-booted server for a run ('snapshot for osc-backup-tmp-"
        "<run>-...') and that call's image, target volumes of restores "
        "that did not finish, servers of server restores that did not "
        "finish (removed first), "
        "and keys an image restore stored in Barbican that no remaining "
        "image uses. It touches only resources whose name carries "
        "osc-backup's prefix and a run ID (osc-backup-tmp-<run>-... and "
        "osc-backup-key-<run>-...); a server also only with the metadata "
        "its restore gave it (osc_backup_tool, osc_backup_run_id of that "
        "run, osc_backup_restored_from), and with it the volumes attached "
        "to it and the image it boots from that its restore marked so "
        "(renamed already when the restore was killed). The Remove Command "
        "column has the command that removes each "
        "by hand. Do not run it without --run-id while another osc-backup "
        "run is in progress in the same project: that run's resources "
        "would be removed too."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--run-id',
            metavar='<run-id>',
            type=run_id_arg,
            help=_(
                'Only the resources of this run (the run ID is in the '
                'output and error messages of every backup command)'
            ),
        )
        parser.add_argument(
            '--dry-run',
            action='store_true',
            help=_('List what would be removed; remove nothing'),
        )
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_lib import exceptions

        from osc_backup.procedures import leftovers

        conn = self.connection()
        reporter = self.reporter(parsed_args)
        found = leftovers.find_leftovers(conn, parsed_args.run_id, reporter)
        if parsed_args.dry_run:
            for lo in found:
                lo.result = 'would delete'
            failed = []
        else:
            failed = leftovers.remove_leftovers(conn, found, reporter)
        if failed:
            raise exceptions.CommandError(
                f'{len(failed)} of {len(found)} leftovers could not be '
                'removed; remove them with:\n'
                + '\n'.join(f'  {lo.remove_command}' for lo in failed)
            )
        return HEADERS, ([getattr(lo, c) for c in COLUMNS] for lo in found)
