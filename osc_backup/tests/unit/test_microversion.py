from unittest import mock

from osc_backup.common import microversion
from osc_backup.common import tags
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes


class TestSnapshotForce(base.TestCase):
    def test_below_3_66_in_use_needs_force(self):
        self.assertTrue(microversion.snapshot_needs_force('3.65', 'in-use'))
        self.assertTrue(microversion.snapshot_needs_force('3.0', 'in-use'))
        self.assertTrue(microversion.snapshot_needs_force(None, 'in-use'))

    def test_from_3_66_no_force(self):
        self.assertFalse(microversion.snapshot_needs_force('3.66', 'in-use'))
        self.assertFalse(microversion.snapshot_needs_force('3.71', 'in-use'))

    def test_available_never_forced(self):
        self.assertFalse(
            microversion.snapshot_needs_force('3.0', 'available')
        )


class TestSnapshotCreate(base.TestCase):
    """What goes on the wire: the microversion and force decided together
    (openstacksdk would cap the microversion at 3.65 by itself)."""

    def setUp(self):
        super().setUp()
        self.bs, _ = fakes.make_proxies()
        self.snap = fakes.snapshot(status='creating')

    def create(self, offered, status='in-use'):
        fakes.cinder_makes_snapshots(self.bs, self.snap, offered)
        made = microversion.create_snapshot(
            self.bs, {'volume_id': 'v', 'name': 'n'}, status
        )
        self.assertEqual(self.snap.id, made.id)
        return fakes.sent_snapshot(self.bs)

    def test_old_cloud_gets_force(self):
        body, version = self.create('3.65')
        self.assertEqual('3.65', version)
        self.assertIs(True, body['force'])
        self.assertEqual('v', body['volume_id'])

    def test_new_cloud_gets_3_66_without_force(self):
        for offered in ('3.66', '3.71'):
            body, version = self.create(offered)
            self.assertEqual('3.66', version)
            self.assertNotIn('force', body)

    def test_available_volume_never_forced(self):
        body, _version = self.create('3.50', status='available')
        self.assertNotIn('force', body)

    def test_unknown_versions_base_version_and_force(self):
        # a cloud that announces no microversions
        body, version = self.create(None)
        # sent explicitly: openstacksdk would pick its own otherwise
        self.assertEqual('3.0', version)
        self.assertIs(True, body['force'])

    def test_user_pinned_microversion_wins(self):
        proxy = mock.Mock(default_microversion='3.70')
        self.assertEqual('3.70', microversion.snapshot_microversion(proxy))
        proxy = mock.Mock(default_microversion='3.60')
        self.assertEqual('3.60', microversion.snapshot_microversion(proxy))
        proxy.get_endpoint_data.assert_not_called()


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

    def test_tagged_names_round_trip(self):
        run = tags.Run()
        self.assertEqual(
            ('tmp', run.run_id),
            tags.tagged_name(run.temporary_name('image', 'x')),
        )
        self.assertEqual(
            ('key', run.run_id), tags.tagged_name(run.key_name('img'))
        )

    def test_look_alikes_are_not_tagged(self):
        for name in (
            None, '', 'db-backup', 'osc-backup-tmp-', 'osc-backup-tmp-x',
            'osc-backup-tmp-volume-of-db',  # no run tag
            'osc-backup-tmp-ABC123DEF456-volume-of-db',  # not a run ID
            'osc-backup-tmp-abc123def45-volume-of-db',  # 11 digits
            'osc-backup-tmp-abc123def4567-volume-of-db',  # 13 digits
            'osc-backup-tmp-abc123def456',  # nothing after the tag
            'my-osc-backup-tmp-abc123def456-volume-of-db',
            'osc-backup-key-abc123def456',
        ):
            self.assertIsNone(tags.tagged_name(name), name)

    def test_run_id_validated(self):
        self.assertRaises(ValueError, tags.Run, run_id='r1')
        self.assertFalse(tags.is_run_id('abc123def45g'))
        self.assertTrue(tags.is_run_id('abc123def456'))
