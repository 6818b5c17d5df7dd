from osc_lib import exceptions

from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.v1 import cleanup

TMP = {
    'osc_backup_tool': 'osc-backup',
    'osc_backup_temporary': 'true',
    'osc_backup_run_id': 'r1',
}


class TestCleanupCommand(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.vol = fakes.volume(metadata=TMP)
        self.block_storage.volumes.return_value = [self.vol]
        self.block_storage.snapshots.return_value = []
        self.block_storage.get_volume.return_value = self.vol
        self.cmd = cleanup.Cleanup(self.app, None)

    def test_dry_run_deletes_nothing(self):
        parsed = self.check_parser(
            self.cmd, ['--dry-run'], [('dry_run', True), ('run_id', None)]
        )
        headers, rows = self.cmd.take_action(parsed)
        rows = list(rows)
        self.assertEqual(cleanup.HEADERS, headers)
        self.assertEqual(self.vol.id, rows[0][1])
        self.assertEqual('would delete', rows[0][-1])
        self.block_storage.delete_volume.assert_not_called()

    def test_deletes(self):
        parsed = self.check_parser(
            self.cmd, ['--run-id', 'r1'], [('run_id', 'r1')]
        )
        _headers, rows = self.cmd.take_action(parsed)
        self.assertEqual('deleted', next(iter(rows))[-1])
        self.block_storage.delete_volume.assert_called_once()

    def test_failure_exits_non_zero(self):
        self.block_storage.delete_volume.side_effect = RuntimeError('busy')
        parsed = self.check_parser(self.cmd, [], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn(f'openstack volume delete {self.vol.id}', str(exc))
