from unittest import mock

import fixtures
from osc_lib import exceptions

from osc_backup.procedures import server_backup
from osc_backup.procedures import server_restore
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.tests.unit.test_server_backup import server
from osc_backup.v1 import server as server_cmd


class TestCreateServerBackup(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.compute = fakes.make_compute_proxy()
        self.conn.compute = self.compute
        self.compute.volume_attachments.return_value = []
        self.srv = server()
        self.compute.find_server.return_value = self.srv
        self.cmd = server_cmd.CreateServerBackup(self.app, None)

    def test_parser(self):
        parsed = self.check_parser(
            self.cmd,
            ['web', '--via-backup', '--no-volumes', '--incremental',
             '--container', 'c', '--name', 'n', '--property', 'a=b',
             '--manifest', '/tmp/m.json', '--timeout', '60', '--dry-run'],
            [('server', 'web'), ('method', 'backup'), ('volumes', False),
             ('incremental', True), ('container', 'c'), ('name', 'n'),
             ('properties', {'a': 'b'}), ('manifest', '/tmp/m.json'),
             ('timeout', 60.0), ('dry_run', True)],
        )
        self.assertIsNone(parsed.download)
        parsed = self.check_parser(self.cmd, ['web'], [('method', 'auto')])
        self.assertTrue(parsed.volumes)
        self.check_parser_error(self.cmd, ['web', '--via-image',
                                           '--via-backup'])
        self.check_parser_error(self.cmd, ['web', '--timeout', '0'])

    def test_pause_and_quiesce(self):
        self.check_parser(self.cmd, ['web'],
                          [('pause', False), ('quiesce', False)])
        self.check_parser(self.cmd, ['web', '--pause'], [('pause', True)])
        self.check_parser(self.cmd, ['web', '--quiesce'],
                          [('quiesce', True)])
        self.check_parser_error(self.cmd, ['web', '--pause', '--quiesce'])
        # the options reach the plan: --quiesce of an image-booted server
        parsed = self.check_parser(self.cmd, ['web', '--quiesce'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn('--quiesce', str(exc))
        parsed = self.check_parser(self.cmd, ['web', '--pause',
                                              '--dry-run'], [])
        columns, data = self.cmd.take_action(parsed)
        result = dict(zip(columns, data))
        self.assertEqual('paused', result['mode'])
        self.assertIn('pause', result['steps'].machine_readable()[0])

    def test_dry_run_creates_nothing(self):
        parsed = self.check_parser(self.cmd, ['web', '--dry-run'], [])
        with mock.patch.object(
            server_backup, 'backup_server'
        ) as run:
            columns, data = self.cmd.take_action(parsed)
        run.assert_not_called()
        result = dict(zip(columns, data))
        self.assertTrue(result['dry_run'])
        self.assertIn('createImage', result['steps'].human_readable())

    def test_output(self):
        parsed = self.check_parser(self.cmd, ['web'], [])
        artifacts = [{'disk': 'root-disk', 'id': 'i1'}]
        with mock.patch.object(
            server_backup, 'backup_server',
            return_value={
                'server_id': self.srv.id, 'artifacts': artifacts,
                'skipped_volumes': [], 'notes': ['n'], 'files': [],
            },
        ):
            columns, data = self.cmd.take_action(parsed)
        self.assertEqual(server_cmd.COLUMNS, columns)
        result = dict(zip(columns, data))
        self.assertEqual(artifacts, result['artifacts'].machine_readable())
        self.assertEqual(['n'], result['notes'].machine_readable())

    def test_bad_input_is_one_error(self):
        self.srv.status = 'ERROR'
        parsed = self.check_parser(self.cmd, ['web'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn("is 'ERROR'", str(exc))


class TestRestoreServer(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.cmd = server_cmd.RestoreServer(self.app, None)
        self.recorded = mock.Mock(
            origin='run aaaaaaaaaaaa', run_id='aaaaaaaaaaaa',
            server_id='s', volume_backed=False,
        )
        self.plan = mock.Mock(name='plan', notes=['n'])
        self.plan.name = 'web'
        self.plan.flavor.name = 'm1.tiny'
        patchers = {
            'from_run': mock.patch.object(
                server_restore, 'from_run', return_value=self.recorded),
            'latest_run': mock.patch.object(
                server_restore, 'latest_run', return_value=self.recorded),
            'from_directory': mock.patch.object(
                server_restore, 'from_directory',
                return_value=self.recorded),
            'prepare': mock.patch.object(
                server_restore, 'prepare', return_value=self.plan),
            'plan_steps': mock.patch.object(
                server_restore, 'plan_steps', return_value=['step']),
            'restore_server': mock.patch.object(
                server_restore, 'restore_server', side_effect=lambda *a,
                **kw: {
                    'server_id': 'new', 'volumes': [{'volume_id': 'v'}],
                    'uploaded': [], 'notes': [],
                }),
        }
        self.mocks = {k: p.start() for k, p in patchers.items()}
        for p in patchers.values():
            self.addCleanup(p.stop)

    def test_parser(self):
        self.check_parser(
            self.cmd,
            ['aaaaaaaaaaaa', '--name', 'n', '--flavor', 'f', '--key-name',
             'k', '--availability-zone', 'z', '--nic', 'none',
             '--volume-type', 'a=b', '--volume-type', 'c=d', '--dry-run'],
            [('source', 'aaaaaaaaaaaa'), ('name', 'n'), ('flavor', 'f'),
             ('key_name', 'k'), ('availability_zone', 'z'),
             ('nic', ['none']), ('volume_type', [('a', 'b'), ('c', 'd')]),
             ('dry_run', True)],
        )
        self.check_parser_error(self.cmd, ['r', '--volume-type', 'ab'])
        self.check_parser_error(self.cmd, ['r', '--key-name', 'k',
                                           '--no-key-name'])

    def test_source_or_latest(self):
        for args in ([], ['aaaaaaaaaaaa', '--latest', 'web']):
            parsed = self.check_parser(self.cmd, args, [])
            exc = self.assertRaises(
                exceptions.CommandError, self.cmd.take_action, parsed)
            self.assertIn('--latest', str(exc))
        self.mocks['prepare'].assert_not_called()

    def test_restore_from_run(self):
        parsed = self.check_parser(
            self.cmd, ['aaaaaaaaaaaa', '--nic', 'none',
                       '--volume-type', 'a=b'], [])
        columns, data = self.cmd.take_action(parsed)
        self.mocks['from_run'].assert_called_once_with(
            self.conn, 'aaaaaaaaaaaa')
        opts = self.mocks['prepare'].call_args.args[2]
        self.assertEqual('none', opts.nics)
        self.assertEqual({'a': 'b'}, opts.volume_types)
        self.assertEqual(server_cmd.RESTORE_COLUMNS, columns)
        result = dict(zip(columns, data))
        self.assertEqual([{'volume_id': 'v'}],
                         result['volumes'].machine_readable())

    def test_latest_and_directory(self):
        parsed = self.check_parser(self.cmd, ['--latest', 'web'], [])
        self.cmd.take_action(parsed)
        self.mocks['latest_run'].assert_called_once_with(self.conn, 'web')
        parsed = self.check_parser(self.cmd, [self.useFixture(
            fixtures.TempDir()).path], [])
        self.cmd.take_action(parsed)
        self.mocks['from_directory'].assert_called_once()

    def test_dry_run_creates_nothing(self):
        parsed = self.check_parser(
            self.cmd, ['aaaaaaaaaaaa', '--dry-run'], [])
        columns, data = self.cmd.take_action(parsed)
        self.mocks['restore_server'].assert_not_called()
        result = dict(zip(columns, data))
        self.assertTrue(result['dry_run'])
        self.assertEqual(['step'], result['steps'].machine_readable())
