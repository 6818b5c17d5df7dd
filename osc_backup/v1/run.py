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

"""``openstack backup run``: many volumes and servers in one command."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from osc_lib.cli import format_columns
from osc_lib.cli import parseractions

from osc_backup import command
from osc_backup.i18n import _
from osc_backup.v1 import catalog as catalog_cmd

#: exit status for bad input (nothing was started)
EXIT_INVALID = 2

#: the output columns come from the procedure (stable: public API)
PRUNED_COLUMN = 'Pruned'
REASON_COLUMN = 'Reason'

#: formats for scripts: no progress lines with them
_MACHINE = ('json', 'yaml', 'value', 'csv')


def shard_arg(text: str) -> Any:
    """argparse type for --shard I/N."""
    from osc_backup.common import errors
    from osc_backup.procedures import run_plan

    try:
        return run_plan.parse_shard(text)
    except errors.InvalidInput as exc:
        raise argparse.ArgumentTypeError(
            str(exc).removeprefix('--shard ')
        ) from None


def parallel_arg(text: str) -> int:
    """argparse type for --parallel: a whole number of 1 or more."""
    return command.whole_number(text, 1)


class RunBackup(command.ExitCode, command.Lister):
    _description = _(
        "Back up many volumes and servers, several at a time\n\n"
        "Selects volumes and servers (--volume, --server, --all-volumes, "
        "--all-servers, --property; minus --exclude), each once: a "
        "selected volume attached to a selected server is backed up as "
        "part of that server. Each resource is backed up exactly as "
        "'backup volume create' or 'backup server create' would, with its "
        "own run ID and its own cleanup of temporaries; --parallel of them "
        "at a time. Without --via-image or --via-backup the method is "
        "chosen once per availability zone, as 'backup volume create' "
        "chooses it.\n\n"
        "Output: one row per resource (Result ok, failed or skipped, with "
        "the error), then a one-line summary on stderr. One failure does "
        "not stop the others. Exit status: 0 when every resource is ok, "
        "1 when any failed, 2 for bad input (nothing started), 130/143 "
        "when interrupted.\n\n"
        "Ctrl-C (or SIGTERM) starts nothing more; the resources in "
        "progress stop and remove their temporaries, and the rows of what "
        "finished are printed. A second Ctrl-C stops waiting for those "
        "removals and lists what is left with the commands that remove "
        "it.\n\n"
        "--shard I/N takes a stable part of the selection (by a hash of "
        "each resource ID), so N jobs (e.g. a Kubernetes Indexed Job) "
        "share the work without overlap. --then-prune applies the "
        "retention rules (--keep-last, --keep-daily...) to each source "
        "whose backup in this run succeeded, as 'backup prune --source' "
        "would; a source whose backup failed is never pruned.\n\n"
        "--container, --description and --keep-temporary apply to every "
        "resource's backup as they do to the single verbs' (there is no "
        "--name: one name cannot name many backups). With "
        "--keep-temporary each resource lists its kept temporaries with "
        "the commands that remove them, and the 'backup cleanup --run-id' "
        "of its run."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        select = parser.add_argument_group(_('selection'))
        for flag, metavar, dest, text in (
            ('--volume', '<volume>', 'volumes',
             _('Back up this volume (name or ID; repeat option to back up '
               'several)')),
            ('--server', '<server>', 'servers',
             _('Back up this server with its attached volumes (name or '
               'ID; repeat option to back up several)')),
            ('--exclude', '<volume-or-server>', 'exclude',
             _('Leave this selected volume or server out (name or ID; '
               'repeat option to exclude several)')),
        ):
            select.add_argument(
                flag, metavar=metavar, action='append', default=[],
                dest=dest, help=text,
            )
        for flag, text in (
            ('--all-volumes', _("Back up every volume of the project "
                                "(except osc-backup's own temporaries)")),
            ('--all-servers', _('Back up every server of the project')),
        ):
            select.add_argument(flag, action='store_true', help=text)
        select.add_argument(
            '--property',
            metavar='<key=value>',
            action=parseractions.KeyValueAction,
            dest='properties',
            default={},
            help=_('Back up every volume and server whose metadata has '
                   'this key and value (repeat option: all must match)'),
        )
        select.add_argument(
            '--shard',
            metavar='<I/N>',
            type=shard_arg,
            help=_('Back up only shard I (0 to N-1) of N: a stable '
                   'partition of the selection by a hash of each resource '
                   'ID, the same on every machine (e.g. --shard '
                   '$JOB_COMPLETION_INDEX/3 in a Kubernetes Indexed Job)'),
        )
        command.add_method_args(
            parser,
            _('Back up every volume to a Glance image'),
            _('Back up every volume with the Cinder Backup API. Default: '
              'per availability zone, --via-backup when the cloud has a '
              'working backup service, else --via-image'),
        )
        parser.add_argument(
            '--incremental',
            action='store_true',
            help=_('Cinder backup only: incremental backups on top of '
                   "each volume's latest one (a full one when it has none)"),
        )
        parser.add_argument(
            '--container',
            metavar='<container>',
            help=_('Cinder backup only: the backup container of every '
                   'backup (driver-defined), as backup volume create '
                   '--container; volumes then take the Cinder backup path'),
        )
        parser.add_argument(
            '--description',
            metavar='<description>',
            help=_('Description of every backup (image property '
                   'description, or the Cinder backup description), as '
                   'the single verbs\' --description'),
        )
        parser.add_argument(
            '--keep-temporary',
            action='store_true',
            help=_('Do not delete the temporaries (the image path\'s '
                   'snapshot and volume of an in-use volume, a server\'s '
                   'capture snapshots) for inspection; each resource '
                   'prints the commands that remove them and its backup '
                   'cleanup --run-id command'),
        )
        parser.add_argument(
            '--download',
            metavar='<directory>',
            help=_('Image path only: also download every backup image, '
                   'each resource into its own subdirectory '
                   '<type>-<ID>-<name> of <directory>'),
        )
        parser.add_argument(
            '--parallel',
            metavar='<N>',
            type=parallel_arg,
            default=4,
            help=_('Back up N resources at a time (default: 4)'),
        )
        command.add_plain_timeout_arg(
            parser,
            _('Give up on a resource whose backup takes longer than this '
              'many seconds (default: 3600; each resource has its own); '
              'its temporary resources are still removed'),
        )
        command.add_cleanup_timeout_arg(parser)
        prune = parser.add_argument_group(_('pruning'))
        prune.add_argument(
            '--then-prune',
            action='store_true',
            help=_('After the backups, delete the old backups of each '
                   'source whose backup succeeded, by the retention rules '
                   'below (as backup prune --source <ID>; each source on '
                   'its own)'),
        )
        catalog_cmd.add_retention_args(prune)
        catalog_cmd.add_grouping_args(
            prune,
            _("Apply the rules to each source's backups per kind "
              "('source,kind', the default) or to all its kinds together "
              "('source'); never across sources"),
        )
        parser.add_argument(
            '--dry-run',
            action='store_true',
            help=_('Print the rows of the run with Result planned, the '
                   'method each volume would take and why; create nothing'),
        )
        parse = parser.parse_args

        def parse_args(args: Any = None, namespace: Any = None) -> Any:
            # refused at parse time: before any authentication or request
            parsed = parse(args, namespace)
            rules = not catalog_cmd.retention_policy(parsed).is_empty()
            if parsed.then_prune and not rules:
                parser.error(f'--then-prune: {catalog_cmd.NO_RULE}')
            if rules and not parsed.then_prune:
                parser.error('the --keep-... rules need --then-prune')
            return parsed

        parser.parse_args = parse_args  # type: ignore[method-assign]
        return parser

    def _invalid(self, message: str) -> None:
        self.app.stderr.write(f'backup run: {message}\n')
        self.app.stderr.flush()
        raise SystemExit(EXIT_INVALID)

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import errors
        from osc_backup.procedures import run_exec
        from osc_backup.procedures import run_plan

        opts = run_exec.Options(
            method=parsed_args.method,
            incremental=parsed_args.incremental,
            download=parsed_args.download,
            timeout=parsed_args.timeout,
            parallel=parsed_args.parallel,
            prune=(
                catalog_cmd.retention_policy(parsed_args)
                if parsed_args.then_prune else None
            ),
            prune_group_by=parsed_args.group_by,
            prune_tz=parsed_args.time_zone,
            container=parsed_args.container,
            description=parsed_args.description,
            keep_temporary=parsed_args.keep_temporary,
        )
        criteria = run_plan.Criteria(
            volumes=list(parsed_args.volumes),
            servers=list(parsed_args.servers),
            all_volumes=parsed_args.all_volumes,
            all_servers=parsed_args.all_servers,
            properties=dict(parsed_args.properties or {}),
            exclude=list(parsed_args.exclude),
        )
        reporter = self.reporter(parsed_args)
        if getattr(parsed_args, 'formatter', None) in _MACHINE:
            reporter.progress = False
        try:
            # before authenticating: nothing to look up
            run_exec.check(opts)
            run_plan.check_criteria(criteria)
            conn = self.connection()
            selection = run_plan.select(conn, criteria)
            targets = run_plan.take_shard(
                selection.targets, parsed_args.shard
            )
            planned = run_exec.prepare(
                conn, targets, opts, dry_run=parsed_args.dry_run
            )
        except errors.InvalidInput as exc:
            self._invalid(str(exc))
            raise  # pragma: no cover - _invalid exits
        for note in selection.notes:
            reporter.note(f'Note: {note}')
        if parsed_args.shard is not None:
            reporter.note(
                f'Shard {parsed_args.shard}: {len(targets)} of '
                f'{len(selection.targets)} selected resource(s).'
            )
        columns = list(run_plan.COLUMNS)
        if parsed_args.dry_run:
            for line in opts.describe():
                reporter.note(f'Dry run: {line}.')
            columns.append(REASON_COLUMN)
            rows = [[*list(_row(r)), r.reason] for r in planned]
            summary = run_plan.summarize(planned, 0.0)
            self.app.stderr.write(summary.line() + '\n')
            return columns, rows
        report = run_exec.execute(conn, targets, opts, reporter=reporter)
        rows = [list(_row(r)) for r in report.results]
        if opts.prune is not None:
            columns.append(PRUNED_COLUMN)
            for row, result in zip(rows, report.results, strict=True):
                row.append(format_columns.ListColumn(result.pruned))
                if result.prune_error:
                    row[columns.index('Error')] = '; '.join(
                        e for e in (row[columns.index('Error')],
                                    result.prune_error) if e
                    )
        self.app.stderr.write(report.summary().line() + '\n')
        if report.interrupted:
            self.app.stderr.write(f'Interrupted by {report.interrupted}.\n')
        self.app.stderr.flush()
        self.exit_code = report.exit_code()
        return columns, rows


def _row(result: Any) -> tuple[Any, ...]:
    """A result's values, its backup IDs as a list column."""
    from osc_backup.procedures import run_plan

    values = list(result.row())
    at = run_plan.COLUMNS.index('Backup')
    values[at] = format_columns.ListColumn(values[at])
    return tuple(values)
