from osc_lib import exceptions

from osc_backup.common import tags
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.v1 import cleanup

RUN = tags.Run(run_id='0123456789ab')


class TestCleanupCommand(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.vol = fakes.volume(
            name=RUN.temporary_name('volume', 'db'),
            metadata=RUN.temporary_metadata('src'),
        )
        self.block_storage.volumes.return_value = [self.vol]
        self.block_storage.snapshots.return_value = []
        self.image_client.images.return_value = []
        self.conn.key_manager.secrets.return_value = []
        self.block_storage.get_volume.return_value = self.vol
        self.cmd = cleanup.Cleanup(self.app, None)

    def rows(self, parsed):
        headers, rows = self.cmd.take_action(parsed)
        self.assertEqual(cleanup.HEADERS, headers)
        return [dict(zip(headers, row)) for row in rows]

    def test_dry_run_deletes_nothing(self):
        parsed = self.check_parser(
            self.cmd, ['--dry-run'], [('dry_run', True), ('run_id', None)]
        )
        rows = self.rows(parsed)
        self.assertEqual(self.vol.id, rows[0]['ID'])
        self.assertEqual('would delete', rows[0]['Result'])
        self.assertEqual('temporary volume', rows[0]['What'])
        self.assertEqual(
            f'openstack volume delete {self.vol.id}', rows[0]['Remove Command']
        )
        self.block_storage.delete_volume.assert_not_called()

    def test_deletes(self):
        parsed = self.check_parser(
            self.cmd, ['--run-id', RUN.run_id], [('run_id', RUN.run_id)]
        )
        self.assertEqual('deleted', self.rows(parsed)[0]['Result'])
        self.block_storage.delete_volume.assert_called_once()

    def test_other_run_untouched(self):
        parsed = self.check_parser(self.cmd, ['--run-id', 'fedcba987654'], [])
        self.assertEqual([], self.rows(parsed))
        self.block_storage.delete_volume.assert_not_called()

    def test_bad_run_id_refused(self):
        for bad in ('r1', '', "0123456789ab'; x", '0123456789AB'):
            err = self.check_parser_error(self.cmd, ['--run-id', bad])
            self.assertIn('is not a run ID', err)

    def test_failure_exits_non_zero(self):
        self.block_storage.delete_volume.side_effect = RuntimeError('busy')
        parsed = self.check_parser(self.cmd, [], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn(f'openstack volume delete {self.vol.id}', str(exc))
