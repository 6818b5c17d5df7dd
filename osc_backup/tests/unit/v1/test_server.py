from unittest import mock

from osc_lib import exceptions

from osc_backup.procedures import server_backup
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
