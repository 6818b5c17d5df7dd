"""backup run (osc_backup.v1.run)."""

from unittest import mock

import fixtures

from osc_backup.common import retention
from osc_backup.procedures import run_exec
from osc_backup.procedures import run_plan
from osc_backup.tests.unit import base
from osc_backup.tests.unit.test_run_plan import Cloud
from osc_backup.tests.unit.test_run_plan import volume
from osc_backup.v1 import run as run_cmd


def report(results, interrupted=None):
    return run_exec.Report(results=results, duration=3.0,
                           interrupted=interrupted)


class TestRunBackup(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.cmd = run_cmd.RunBackup(self.app, None)
        self.vols = [
            volume(name='a', metadata={'backup': 'nightly'}),
            volume(name='b', metadata={'backup': 'nightly'}),
        ]
        self.block_storage.volumes.side_effect = (
            lambda **kw: iter(self.vols)
        )
        self.block_storage.find_volume.side_effect = Cloud._finder(
            lambda: self.vols, 'volume'
        )
        self.conn.compute.servers.side_effect = lambda **kw: iter([])
        self.execute = self.useFixture(fixtures.MockPatchObject(
            run_exec, 'execute')).mock

    def run_cmd(self, args):
        parsed = self.check_parser(self.cmd, args, [])
        return parsed, self.cmd.take_action(parsed)

    def test_parser(self):
        parsed = self.check_parser(
            self.cmd,
            ['--volume', 'a', '--volume', 'b', '--server', 's',
             '--all-volumes', '--all-servers', '--property', 'k=v',
             '--exclude', 'x', '--shard', '1/3', '--via-image',
             '--download', '/d', '--parallel', '8', '--timeout', '60',
             '--then-prune', '--keep-last', '2', '--keep-within', '1w',
             '--dry-run'],
            [('volumes', ['a', 'b']), ('servers', ['s']),
             ('all_volumes', True), ('all_servers', True),
             ('properties', {'k': 'v'}), ('exclude', ['x']),
             ('method', 'image'), ('download', '/d'), ('parallel', 8),
             ('timeout', 60.0), ('then_prune', True), ('keep_last', 2),
             ('dry_run', True)],
        )
        self.assertEqual(run_plan.Shard(1, 3), parsed.shard)
        parsed = self.check_parser(self.cmd, ['--all-volumes'], [])
        self.assertEqual(4, parsed.parallel)
        self.assertEqual('auto', parsed.method)
        self.assertIsNone(parsed.shard)

    def test_bad_flags_are_refused_at_parse_time(self):
        for args, text in (
            (['--all-volumes', '--shard', '3/3'], 'counts from 0'),
            (['--all-volumes', '--shard', 'x'], 'expected I/N'),
            (['--all-volumes', '--parallel', '0'], 'must be 1 or more'),
            (['--all-volumes', '--then-prune'], 'no retention rule'),
            (['--all-volumes', '--keep-last', '1'], 'rules need --then-prune'),
            (['--all-volumes', '--via-image', '--via-backup'],
             'not allowed with'),
        ):
            err = self.check_parser_error(self.cmd, args)
            self.assertIn(text, err, args)

    def _invalid(self, args):
        self.stderr.truncate(0)
        self.stderr.seek(0)
        parsed = self.check_parser(self.cmd, args, [])
        exc = self.assertRaises(SystemExit, self.cmd.take_action, parsed)
        self.assertEqual(2, exc.code)
        self.execute.assert_not_called()
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(1, len(lines), lines)
        return lines[0]

    def test_bad_input_exits_2_before_anything(self):
        self.assertIn('Nothing selected', self._invalid([]))
        self.assertIn("'nope'", self._invalid(['--volume', 'nope']))

    def test_bad_option_mixes_exit_2(self):
        line = self._invalid(['--all-volumes', '--via-backup',
                              '--download', '.'])
        self.assertIn('--download', line)
        line = self._invalid(['--all-volumes', '--via-image',
                              '--incremental'])
        self.assertIn('--incremental', line)
        line = self._invalid(['--all-volumes', '--download', '/nonexist'])
        self.assertIn('does not exist', line)

    def test_per_resource_option_mixes_exit_2(self):
        line = self._invalid(['--all-volumes', '--via-image',
                              '--container', 'c'])
        self.assertIn('--container only applies to the Cinder backup path',
                      line)
        line = self._invalid(['--all-volumes', '--download', '.',
                              '--container', 'c'])
        self.assertIn('cannot be combined', line)
        line = self._invalid(['--all-volumes', '--time-zone', 'local'])
        self.assertIn('need --then-prune', line)
        line = self._invalid(['--all-volumes', '--then-prune',
                              '--keep-last', '1', '--group-by', 'kind'])
        self.assertIn("'source,kind' (the default) or 'source'", line)

    def test_per_resource_options_reach_the_procedure(self):
        import zoneinfo

        a, _b = self.vols
        self.execute.return_value = report([
            run_plan.ResourceResult(a.id, 'volume', 'a', 'ok', 'backup')])
        self.run_cmd(['--volume', 'a', '--via-backup', '--container', 'c1',
                      '--description', 'nightly', '--keep-temporary',
                      '--then-prune', '--keep-daily', '7',
                      '--group-by', 'source',
                      '--time-zone', 'Australia/Sydney'])
        opts = self.execute.call_args.args[2]
        self.assertEqual('c1', opts.container)
        self.assertEqual('nightly', opts.description)
        self.assertTrue(opts.keep_temporary)
        self.assertEqual(('source',), opts.prune_group_by)
        self.assertEqual(zoneinfo.ZoneInfo('Australia/Sydney'),
                         opts.prune_tz)

    def test_dry_run_shows_the_per_resource_options(self):
        _parsed, (columns, rows) = self.run_cmd(
            ['--property', 'backup=nightly', '--via-backup', '--container',
             'c1', '--description', 'nightly', '--keep-temporary',
             '--dry-run'])
        self.execute.assert_not_called()
        err = self.stderr.getvalue()
        self.assertIn('Dry run: Cinder backup container: c1.', err)
        self.assertIn('Dry run: Description: nightly.', err)
        self.assertIn('--keep-temporary', err)
        self.assertEqual(['backup', 'backup'],
                         [dict(zip(columns, r))['Method'] for r in rows])

    def test_bad_time_zone_is_refused_at_parse_time(self):
        err = self.check_parser_error(
            self.cmd, ['--all-volumes', '--then-prune', '--keep-last', '1',
                       '--time-zone', 'Mars/Olympus'])
        self.assertIn('is not a time zone', err)

    def test_nothing_selected_needs_no_cloud(self):
        with mock.patch.object(self.cmd, 'connection') as connection:
            self._invalid(['--exclude', 'a'])
        connection.assert_not_called()

    def test_dry_run_plans_and_creates_nothing(self):
        _parsed, (columns, rows) = self.run_cmd(
            ['--property', 'backup=nightly', '--via-image', '--dry-run'])
        self.execute.assert_not_called()
        self.assertEqual([*list(run_plan.COLUMNS), 'Reason'], columns)
        self.assertEqual(2, len(rows))
        row = dict(zip(columns, rows[0]))
        self.assertEqual('planned', row['Result'])
        self.assertEqual('image', row['Method'])
        self.assertEqual('requested with --via-image', row['Reason'])
        self.assertEqual(0, self.cmd.exit_code)
        self.assertIn('planned, nothing started', self.stderr.getvalue())

    def test_shards_partition_the_selection(self):
        seen = []
        for index in range(3):
            self.stderr.truncate(0)
            _p, (_columns, rows) = self.run_cmd(
                ['--all-volumes', '--via-image', '--dry-run',
                 '--shard', f'{index}/3'])
            seen += [r[0] for r in rows]
        self.assertCountEqual([v.id for v in self.vols], seen)

    def test_rows_summary_and_exit_code(self):
        a, b = self.vols
        self.execute.return_value = report([
            run_plan.ResourceResult(
                a.id, 'volume', 'a', 'ok', 'image', backups=['i1'],
                size_bytes=10, duration=1.0),
            run_plan.ResourceResult(
                b.id, 'volume', 'b', 'failed', 'image',
                error="volume went to 'error'"),
        ])
        _p, (columns, rows) = self.run_cmd(
            ['--property', 'backup=nightly', '--via-image', '--parallel',
             '2'])
        self.assertEqual(list(run_plan.COLUMNS), columns)
        first = dict(zip(columns, rows[0]))
        self.assertEqual(['i1'], first['Backup'].machine_readable())
        self.assertEqual(1, self.cmd.exit_code)
        self.assertIn('2 resource(s): 1 ok, 1 failed',
                      self.stderr.getvalue())
        opts = self.execute.call_args.args[2]
        self.assertEqual(2, opts.parallel)
        targets = self.execute.call_args.args[1]
        self.assertEqual({a.id, b.id}, {t.id for t in targets})
        # the methods were chosen before the run
        self.assertTrue(all(t.choice for t in targets))

    def test_all_ok_exits_0(self):
        a, _b = self.vols
        self.execute.return_value = report([
            run_plan.ResourceResult(a.id, 'volume', 'a', 'ok', 'image')])
        self.run_cmd(['--volume', 'a', '--via-image'])
        self.assertEqual(0, self.cmd.exit_code)

    def test_interrupted_prints_rows_and_exits_130(self):
        a, _b = self.vols
        self.execute.return_value = report([
            run_plan.ResourceResult(a.id, 'volume', 'a', 'failed', 'image',
                                    error='interrupted (SIGINT)')
        ], interrupted='SIGINT')
        _p, (_c, rows) = self.run_cmd(['--volume', 'a', '--via-image'])
        self.assertEqual(1, len(rows))
        self.assertEqual(130, self.cmd.exit_code)
        self.assertIn('Interrupted by SIGINT', self.stderr.getvalue())

    def test_then_prune_adds_a_column(self):
        a, _b = self.vols
        self.execute.return_value = report([
            run_plan.ResourceResult(a.id, 'volume', 'a', 'ok', 'image',
                                    pruned=['old'],
                                    prune_error='prune: x: failed')])
        _p, (columns, rows) = self.run_cmd(
            ['--volume', 'a', '--via-image', '--then-prune',
             '--keep-last', '3'])
        self.assertEqual([*list(run_plan.COLUMNS), 'Pruned'], columns)
        row = dict(zip(columns, rows[0]))
        self.assertEqual(['old'], row['Pruned'].machine_readable())
        self.assertIn('prune: x: failed', row['Error'])
        opts = self.execute.call_args.args[2]
        self.assertEqual(retention.Policy(last=3), opts.prune)

    def test_json_output_has_no_progress(self):
        _a, _b = self.vols
        self.execute.return_value = report([])
        parsed = self.check_parser(
            self.cmd, ['--volume', 'a', '--via-image', '-f', 'json'], [])
        with mock.patch.object(self.stderr, 'isatty', return_value=True):
            self.cmd.take_action(parsed)
        self.assertFalse(self.execute.call_args.kwargs['reporter'].progress)
