from unittest import mock

from osc_backup.common import microversion
from osc_backup.common import tags
from osc_backup.tests.unit import base


class TestSnapshotForce(base.TestCase):
    def _needs(self, sent, status='in-use'):
        with mock.patch.object(
            microversion, 'snapshot_microversion', return_value=sent
        ):
            return microversion.snapshot_needs_force(mock.Mock(), status)

    def test_below_3_66_in_use_needs_force(self):
        self.assertTrue(self._needs('3.65'))
        self.assertTrue(self._needs('3.0'))
        self.assertTrue(self._needs(None))

    def test_from_3_66_no_force(self):
        self.assertFalse(self._needs('3.66'))
        self.assertFalse(self._needs('3.71'))

    def test_available_never_forced(self):
        self.assertFalse(self._needs('3.0', status='available'))

    def test_decided_from_what_the_sdk_sends(self):
        # openstacksdk caps Snapshot at 3.65 even when the server has more
        proxy = mock.Mock(default_microversion=None)
        with mock.patch(
            'openstack.utils.maximum_supported_microversion',
            return_value='3.65',
        ) as maximum:
            self.assertEqual(
                '3.65', microversion.snapshot_microversion(proxy)
            )
        self.assertEqual('3.65', maximum.call_args.args[1])

    def test_user_pinned_microversion_wins(self):
        proxy = mock.Mock(default_microversion='3.70')
        self.assertEqual('3.70', microversion.snapshot_microversion(proxy))
        self.assertFalse(
            microversion.snapshot_needs_force(proxy, 'in-use')
        )


class TestTags(base.TestCase):
    def test_temporary_names_and_metadata(self):
        run = tags.Run(run_id='abc123def456')
        self.assertEqual(
            'osc-backup-tmp-abc123def456-snapshot-of-db-data',
            run.temporary_name('snapshot', 'db data'),
        )
        md = run.temporary_metadata('vol-1')
        self.assertTrue(tags.is_temporary(md))
        self.assertEqual('abc123def456', md['osc_backup_run_id'])
        self.assertEqual('vol-1', md['osc_backup_source_volume_id'])
        self.assertFalse(tags.is_temporary({'osc_backup_temporary': 'true'}))
        self.assertFalse(tags.is_temporary(None))

    def test_run_ids_unique(self):
        self.assertNotEqual(tags.Run().run_id, tags.Run().run_id)
