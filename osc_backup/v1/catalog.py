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

"""``openstack backup list``, ``show``, ``delete`` and ``prune``: the
catalog of what osc-backup made, and chain-aware retention."""

from __future__ import annotations

import argparse
import datetime
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from osc_lib import exceptions
from osc_lib import utils as osc_utils
from osc_lib.cli import format_columns

from osc_backup import command
from osc_backup.i18n import _

LOG = logging.getLogger(__name__)

#: ``backup list`` (stable: public API)
LIST_HEADERS = (
    'ID', 'Kind', 'Source', 'Source Name', 'Created', 'Size',
    'Consistency', 'Run', 'Depends On', 'Status',
)
LONG_HEADERS = (
    'Name', 'Server', 'Server Name', 'Incremental', 'Chain', 'Dependents',
    'Key ID', 'Record',
)
RUN_HEADERS = (
    'Run', 'Source', 'Source Name', 'Created', 'Kinds', 'Parts', 'Size',
    'Status',
)
SHOW_FIELDS = (
    'id', 'name', 'kind', 'status', 'source_id', 'source_name', 'created',
    'size', 'consistency', 'run_id', 'server_id', 'server_name',
    'is_incremental', 'depends_on', 'chain', 'dependents',
    'foreign_dependents', 'run_parts', 'key_id', 'path', 'record',
)
DELETE_HEADERS = ('ID', 'Kind', 'Source', 'Parts', 'Result')
PRUNE_HEADERS = (
    'ID', 'Kind', 'Source', 'Created', 'Action', 'Reasons', 'Result',
)

KINDS = ('volume-image', 'volume-backup', 'server-image', 'image')


def _when(value: datetime.datetime | None) -> str:
    if value is None:
        return ''
    return value.astimezone(datetime.UTC).isoformat(timespec='seconds')


def time_arg(text: str) -> datetime.datetime:
    """argparse type for --since/--until: ISO 8601 date or time (UTC when
    no zone is given)."""
    from osc_backup.procedures import catalog

    when = catalog.parse_time(text)
    if when is None:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not an ISO 8601 date or time (e.g. 2026-01-31 "
            'or 2026-01-31T12:00:00Z)'
        )
    return when


def count_arg(text: str) -> int:
    """argparse type for --keep-*: a count, or 'unlimited'."""
    if text == 'unlimited':
        return -1
    return command.whole_number(text, 0, "a number or 'unlimited'")


def duration_arg(text: str) -> Any:
    from osc_backup.common import retention

    try:
        return retention.parse_duration(text)
    except retention.InvalidDuration as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def group_by_arg(text: str) -> tuple[str, ...]:
    fields = tuple(f.strip() for f in text.split(',') if f.strip())
    bad = [f for f in fields if f not in ('source', 'kind')]
    if bad or len(set(fields)) != len(fields):
        raise argparse.ArgumentTypeError(
            f"'{text}': give 'source', 'kind', 'source,kind' or '' (one "
            'group for everything)'
        )
    return fields


def zone_arg(text: str) -> datetime.tzinfo:
    if text.upper() == 'UTC':
        return datetime.UTC
    if text == 'local':
        zone = datetime.datetime.now().astimezone().tzinfo
        assert zone is not None
        return zone
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a time zone (UTC, local, or a name such as "
            'Australia/Sydney)'
        ) from None


def run_arg(text: str) -> str:
    from osc_backup.v1.cleanup import run_id_arg

    return run_id_arg(text)


def _add_timeout_arg(parser: argparse.ArgumentParser) -> None:
    command.add_plain_timeout_arg(
        parser,
        _('Give up waiting for the deletions when they take longer than '
          'this many seconds in all (default: 3600)'),
    )


NO_RULE = (
    'no retention rule given (--keep-last, --keep-hourly, --keep-daily, '
    '--keep-weekly, --keep-monthly, --keep-yearly or --keep-within): '
    'refusing to delete anything'
)


def add_retention_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
) -> None:
    """--keep-last/hourly/daily/weekly/monthly/yearly and --keep-within:
    the retention rules of ``backup prune`` (and of ``backup run
    --then-prune``); read them with :func:`retention_policy`."""
    for name, period in (
        ('last', 'the N newest backups'),
        ('hourly', 'the newest backup of each of the N newest hours'),
        ('daily', 'the newest backup of each of the N newest days'),
        ('weekly', 'the newest backup of each of the N newest ISO '
                   'weeks'),
        ('monthly', 'the newest backup of each of the N newest months'),
        ('yearly', 'the newest backup of each of the N newest years'),
    ):
        parser.add_argument(
            f'--keep-{name}',
            metavar='<N>',
            type=count_arg,
            default=0,
            help=_('Keep %s that have backups, per group '
                   "('unlimited': all)") % period
            if name != 'last' else
            _("Keep %s of each group ('unlimited': all)") % period,
        )
    parser.add_argument(
        '--keep-within',
        metavar='<duration>',
        type=duration_arg,
        help=_('Keep every backup made within <duration> before now: '
               'numbers with y, m (months), w, d, h, e.g. 2w3d'),
    )


def add_grouping_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    group_by_help: str | None = None,
) -> None:
    """--group-by and --time-zone: how ``backup prune`` (and ``backup run
    --then-prune``) groups backups and cuts calendar periods."""
    parser.add_argument(
        '--group-by',
        metavar='<fields>',
        type=group_by_arg,
        default=('source', 'kind'),
        help=group_by_help or _(
            "Apply the rules per 'source,kind' (default), per "
            "'source' (the kinds of one source together), per "
            "'kind', or to everything at once ('')"),
    )
    parser.add_argument(
        '--time-zone',
        metavar='<zone>',
        type=zone_arg,
        default=datetime.UTC,
        help=_("Cut hours, days, weeks, months and years in this time "
               "zone: UTC (default), 'local', or a name such as "
               'Australia/Sydney'),
    )


def retention_policy(parsed_args: argparse.Namespace) -> Any:
    """The :class:`retention.Policy` of :func:`add_retention_args`."""
    from osc_backup.common import retention

    return retention.Policy(
        last=parsed_args.keep_last, hourly=parsed_args.keep_hourly,
        daily=parsed_args.keep_daily, weekly=parsed_args.keep_weekly,
        monthly=parsed_args.keep_monthly,
        yearly=parsed_args.keep_yearly, within=parsed_args.keep_within,
    )


def _add_filter_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--source',
        metavar='<volume-or-server>',
        help=_(
            'Only backups of this volume, or the runs of this server '
            '(name or ID; the ID or recorded name of a deleted one works '
            'too)'
        ),
    )
    parser.add_argument(
        '--kind',
        metavar='<kind>',
        choices=KINDS,
        help=_(
            'Only backups of this kind: volume-image, volume-backup, '
            'server-image (a server\'s root disk image), or image (a local '
            'set without a record)'
        ),
    )
    parser.add_argument(
        '--dir',
        metavar='<directory>',
        help=_(
            'The local backup sets under <directory> (from their '
            'validated manifests; symbolic links are not followed) '
            'instead of the cloud'
        ),
    )


class _CatalogCommand:
    """What the catalog verbs share: loading and filtering."""

    def load(self, parsed_args: argparse.Namespace) -> Any:
        from osc_backup.procedures import catalog

        reporter = self.reporter(parsed_args)  # type: ignore[attr-defined]
        if parsed_args.dir is not None:
            return catalog.load_local(parsed_args.dir, reporter)
        return catalog.load(self.connection(), reporter)  # type: ignore

    def filters(self, parsed_args: argparse.Namespace) -> Any:
        from osc_backup.procedures import catalog

        sources = None
        if parsed_args.source:
            if parsed_args.dir is not None:
                sources = {parsed_args.source}
            else:
                sources = catalog.resolve_source(
                    self.connection(),  # type: ignore[attr-defined]
                    parsed_args.source,
                )
        return catalog.Filters(
            sources=sources,
            kind=parsed_args.kind,
            run_id=getattr(parsed_args, 'run', None),
            since=getattr(parsed_args, 'since', None),
            until=getattr(parsed_args, 'until', None),
        )


class ListBackup(_CatalogCommand, command.Lister):
    _description = _(
        "List the backups osc-backup made\n\n"
        "Reads the records the tool writes (osc_backup_* image properties "
        "and Cinder backup metadata): one paginated query for images and "
        "one for Cinder backups; filters Cinder cannot apply for members "
        "are applied here. Images without the record, images a user made, "
        "and Cinder backups made by hand are never listed, whatever their "
        "names. Depends On is the backup an incremental builds on (see "
        "'backup show' for whether it is recorded or inferred). Times are "
        "UTC."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_filter_args(parser)
        parser.add_argument(
            '--run',
            metavar='<run-id>',
            type=run_arg,
            help=_('Only the backups of this run'),
        )
        parser.add_argument(
            '--since',
            metavar='<time>',
            type=time_arg,
            help=_('Only backups made at or after <time> (ISO 8601; UTC '
                   'unless a zone is given)'),
        )
        parser.add_argument(
            '--until',
            metavar='<time>',
            type=time_arg,
            help=_('Only backups made at or before <time> (ISO 8601; UTC '
                   'unless a zone is given)'),
        )
        parser.add_argument(
            '--long',
            action='store_true',
            help=_('Also list the rest of the record'),
        )
        parser.add_argument(
            '--by-run',
            action='store_true',
            help=_('One row per run (a server run: its root disk image '
                   'and the backups of its volumes) with its parts'),
        )
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.procedures import catalog

        cat = self.load(parsed_args)
        selected = catalog.select(cat, self.filters(parsed_args))
        if parsed_args.by_run:
            return self._by_run(selected)
        headers = list(LIST_HEADERS)
        if parsed_args.long:
            headers += LONG_HEADERS
        if parsed_args.dir is not None:
            headers.append('Path')
        rows = []
        for rec in selected:
            row: list[Any] = [
                rec.id, rec.kind, rec.source_id, rec.source_name,
                _when(rec.created), _size(rec.size),
                rec.consistency, rec.run_id, rec.depends_on, rec.status,
            ]
            if parsed_args.long:
                row += [
                    rec.name, rec.server_id, rec.server_name,
                    rec.is_incremental, rec.chain,
                    format_columns.ListColumn(rec.dependents),
                    rec.key_id, format_columns.DictColumn(rec.record),
                ]
            if parsed_args.dir is not None:
                row.append(rec.path)
            rows.append(row)
        return headers, rows

    @staticmethod
    def _by_run(selected: list[Any]) -> tuple[Sequence[str], Iterable[Any]]:
        runs: dict[str, list[Any]] = {}
        for rec in selected:
            runs.setdefault(rec.run_id or rec.id, []).append(rec)
        rows = []
        for run_id, parts in runs.items():
            first = parts[0]
            created = min(
                (p.created for p in parts if p.created), default=None
            )
            rows.append([
                run_id,
                first.server_id or first.source_id,
                first.server_name or first.source_name,
                _when(created),
                format_columns.ListColumn(sorted({p.kind for p in parts})),
                format_columns.ListColumn(
                    [f'{p.kind} {p.id}' for p in parts]
                ),
                format_columns.SizeColumn(sum(p.size or 0 for p in parts)),
                format_columns.ListColumn(
                    sorted({p.status or '' for p in parts})
                ),
            ])
        return RUN_HEADERS, rows


class ShowBackup(command.ShowOne):
    _description = _(
        "Show a backup osc-backup made: its whole record, its chain (what "
        "it builds on, what builds on it) and the key it needs"
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'backup',
            metavar='<backup>',
            help=_('Backup to show: an image or Cinder backup ID (or name) '
                   'from backup list'),
        )
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.procedures import catalog

        cat = catalog.load(self.connection(), self.reporter(parsed_args))
        rec = catalog.find_record(cat, parsed_args.backup)
        chain = rec.chain
        if chain == catalog.CHAIN_INFERRED:
            chain = (
                'inferred (not recorded: the backup of the same volume with '
                'the newest data_timestamp made before it)'
            )
        parts = cat.runs().get(rec.run_id or '', []) if rec.server_id else []
        info = {
            'id': rec.id, 'name': rec.name, 'kind': rec.kind,
            'status': rec.status, 'source_id': rec.source_id,
            'source_name': rec.source_name, 'created': _when(rec.created),
            'size': _size(rec.size),
            'consistency': rec.consistency, 'run_id': rec.run_id,
            'server_id': rec.server_id, 'server_name': rec.server_name,
            'is_incremental': rec.is_incremental,
            'depends_on': rec.depends_on, 'chain': chain,
            'dependents': format_columns.ListColumn(rec.dependents),
            'foreign_dependents': format_columns.ListColumn(
                rec.foreign_dependents
            ),
            'run_parts': format_columns.ListColumn(
                [f'{p.kind} {p.id}' for p in parts if p.id != rec.id]
            ),
            'key_id': rec.key_id, 'path': rec.path,
            'record': format_columns.DictColumn(rec.record),
        }
        return SHOW_FIELDS, [info[f] for f in SHOW_FIELDS]


def _size(size: int | None) -> Any:
    return '' if size is None else format_columns.SizeColumn(size)


def _human(size: int) -> str:
    return str(osc_utils.format_size(size))


class DeleteBackup(command.ExitCode, command.Lister):
    _description = _(
        "Delete backups osc-backup made, waiting until they are gone\n\n"
        "Images and Cinder backups, or whole runs with --run. Anything "
        "the tool did not make is refused, whatever its name. A backup "
        "that incremental backups build on is refused with the list of "
        "them (Cinder refuses it too), unless --with-dependents deletes "
        "them as well, newest first. A failure does not stop the other "
        "deletions; the exit code is non-zero."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'backups',
            metavar='<backup>',
            nargs='*',
            help=_('Backup(s) to delete (ID or name from backup list)'),
        )
        parser.add_argument(
            '--run',
            metavar='<run-id>',
            type=run_arg,
            action='append',
            default=[],
            dest='runs',
            help=_('Delete every backup of this run (repeat option to '
                   'delete several runs)'),
        )
        parser.add_argument(
            '--with-dependents',
            action='store_true',
            help=_('Also delete the backups that build on them, newest '
                   'first'),
        )
        _add_timeout_arg(parser)
        return parser

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import waits
        from osc_backup.procedures import catalog

        if not parsed_args.backups and not parsed_args.runs:
            raise exceptions.CommandError(
                _('Give at least one backup, or --run <run-id>.')
            )
        conn = self.connection()
        reporter = self.reporter(parsed_args)
        cat = catalog.load(conn, reporter)
        order = catalog.resolve_for_delete(
            cat, parsed_args.backups, runs=parsed_args.runs,
            with_dependents=parsed_args.with_dependents,
        )
        outcomes = catalog.delete_units(
            conn, order, reporter,
            timeout=waits.Deadline(parsed_args.timeout),
        )
        failed = [o for o in outcomes if o.failed]
        if failed:
            self.exit_code = 1
            self.app.stderr.write(
                f'{len(failed)} of {len(outcomes)} backups failed to '
                'delete.\n'
            )
        return DELETE_HEADERS, [
            [o.unit.id, o.unit.kind, o.unit.source_id,
             format_columns.ListColumn([p.id for p in o.unit.parts]),
             o.result]
            for o in outcomes
        ]


class PruneBackup(command.ExitCode, _CatalogCommand, command.Lister):
    _description = _(
        "Delete old backups osc-backup made, by retention rules\n\n"
        "The rules are restic's: a backup is kept if any rule keeps it. "
        "--keep-hourly/daily/weekly/monthly/yearly N keep the newest "
        "backup of each of the newest N hours, days, ISO weeks, months or "
        "years that have one (a group with fewer such periods keeps its "
        "oldest backup too); --keep-last N the N newest; --keep-within "
        "DURATION (e.g. 2w3d, 1y6m, 12h) every backup made within that "
        "time before now. Calendar periods are cut in UTC unless "
        "--time-zone says otherwise. Rules apply per group: by default "
        "per source and kind; a server run (its root disk image and the "
        "backups of its volumes) is one unit. The newest backup of every "
        "group is always kept, and so is every backup a kept one builds "
        "on (reason 'base of <ID>'). Only what osc-backup made is ever a "
        "candidate. Deletions go newest incremental first; a failure does "
        "not stop the others, and the exit code is non-zero. Without any "
        "rule, nothing is done (exit code 2)."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        add_retention_args(parser)
        add_grouping_args(parser)
        _add_filter_args(parser)
        parser.add_argument(
            '--dry-run',
            action='store_true',
            help=_('Print the table of what would be kept and deleted, and '
                   'why; delete nothing'),
        )
        _add_timeout_arg(parser)
        parse = parser.parse_args

        def parse_args(args: Any = None, namespace: Any = None) -> Any:
            # refused at parse time: before any authentication or request
            parsed = parse(args, namespace)
            if self.policy(parsed).is_empty():
                parser.error(NO_RULE)
            return parsed

        parser.parse_args = parse_args  # type: ignore[method-assign]
        return parser

    def policy(self, parsed_args: argparse.Namespace) -> Any:
        return retention_policy(parsed_args)

    def backup_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[Sequence[str], Iterable[Any]]:
        from osc_backup.common import waits
        from osc_backup.procedures import catalog

        policy = self.policy(parsed_args)
        if policy.is_empty():
            self.app.stderr.write(f'backup prune: {NO_RULE}.\n')
            raise SystemExit(2)
        cat = self.load(parsed_args)
        selected = catalog.select(cat, self.filters(parsed_args))
        now = datetime.datetime.now(datetime.UTC)
        plan = catalog.plan_prune(
            cat, selected, policy, group_by=parsed_args.group_by, now=now,
            tz=parsed_args.time_zone,
        )
        results: dict[str, str] = {}
        freed = 0
        failed = 0
        if parsed_args.dry_run:
            for unit in plan.order:
                results[unit.id] = 'dry run'
                freed += unit.size
        else:
            outcomes = catalog.delete_units(
                self.connection() if parsed_args.dir is None else None,
                plan.order, self.reporter(parsed_args),
                timeout=waits.Deadline(parsed_args.timeout),
            )
            for o in outcomes:
                results[o.unit.id] = o.result
                freed += o.freed
                failed += o.failed
        rows = []
        for d in plan.decisions:
            unit = plan.units[d.entry.id]
            rows.append([
                unit.id, unit.kind, unit.source_id, _when(unit.created),
                d.action, format_columns.ListColumn(d.reasons),
                results.get(unit.id, ''),
            ])
        kept = sum(1 for d in plan.decisions if d.keep)
        if parsed_args.dry_run:
            summary = (
                f'Dry run: would keep {kept}, would delete '
                f'{len(plan.order)} and free {_human(freed)}.'
            )
        else:
            summary = (
                f'Kept {kept}, deleted {len(plan.order) - failed}, freed '
                f'{_human(freed)}.'
            )
            if failed:
                summary += f' {failed} could not be deleted.'
                self.exit_code = 1
        self.app.stderr.write(summary + '\n')
        return PRUNE_HEADERS, rows
