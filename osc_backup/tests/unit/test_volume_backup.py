import io
from unittest import mock

from openstack.block_storage.v3 import backup as _backup
from openstack.block_storage.v3 import service as _service
from openstack import exceptions as sdk_exc
from openstack.test import fakes as sdk_fakes

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common.progress import Reporter
from osc_backup.procedures import volume_backup
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes


def backup(**attrs):
    defaults = {
        'status': 'creating',
        'name': 'b',
        'size': 1,
        'container': 'c',
        'is_incremental': False,
        'metadata': {},
        'fail_reason': None,
    }
    defaults.update(attrs)
    return sdk_fakes.generate_fake_resource(_backup.Backup, **defaults)


NOW = '2026-01-02T03:04:50.000000'


def service(**attrs):
    defaults = {
        'binary': 'cinder-backup',
        'host': 'node1',
        'status': 'enabled',
        'state': 'up',
        'availability_zone': 'nova',
        'updated_at': NOW,
    }
    defaults.update(attrs)
    return sdk_fakes.generate_fake_resource(_service.Service, **defaults)


def http_error(cls, status, message):
    response = mock.Mock(status_code=status, headers={}, text=message)
    response.json.return_value = {}
    return cls(message=message, response=response, details=message)


class BackupTestCase(base.TestCase):
    max_microversion = (3, 71)

    def setUp(self):
        super().setUp()
        self.bs, self.image_proxy = fakes.make_proxies()
        self.conn = mock.Mock(block_storage=self.bs, image=self.image_proxy)
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)
        self.run_ctx = tags.Run(run_id='0123456789ab')
        patcher = mock.patch.object(
            volume_backup, 'supports', side_effect=self._supports
        )
        patcher.start()
        self.addCleanup(patcher.stop)
        self.vol = fakes.volume(
            status='available', name='db', size=2, availability_zone='nova'
        )
        self.created = backup(volume_id=self.vol.id)
        self.bs.create_backup.return_value = self.created
        self.bs.backups.return_value = []
        self.bs.wait_for_status.side_effect = self._wait
        self.bs.get_backup.side_effect = lambda bid: self.created
        self.bs.get_volume.side_effect = lambda vid: self.vol

    def _supports(self, bs, version):
        major, minor = (int(p) for p in version.split('.'))
        return (major, minor) <= self.max_microversion

    def _wait(self, res, status, **kwargs):
        res.status = status
        return res

    def run_backup(self, volume=None, **opts):
        options = volume_backup.Options(interval=0, **opts)
        return volume_backup.backup_volume_via_backup(
            self.conn, volume or self.vol, options, run=self.run_ctx,
            reporter=self.reporter,
        )


class TestBackupPath(BackupTestCase):
    def test_available_volume(self):
        result = self.run_backup(name='n', description='d', container='c')
        attrs = self.bs.create_backup.call_args.kwargs
        self.assertEqual(self.vol.id, attrs['volume_id'])
        self.assertEqual('n', attrs['name'])
        self.assertEqual('d', attrs['description'])
        self.assertEqual('c', attrs['container'])
        self.assertFalse(attrs['is_incremental'])
        self.assertNotIn('force', attrs)
        self.assertNotIn('availability_zone', attrs)
        md = attrs['metadata']
        self.assertEqual('backup', md['osc_backup_method'])
        self.assertEqual('file', md['osc_backup_volume_type'])
        self.assertEqual('2', md['osc_backup_volume_size_gb'])
        self.assertEqual('false', md['osc_backup_bootable'])
        self.assertEqual(self.vol.id, md['osc_backup_source_volume_id'])
        self.assertEqual('db', md['osc_backup_source_volume_name'])
        self.assertEqual('0123456789ab', md['osc_backup_run_id'])
        self.assertEqual('backup', result['method'])
        self.assertEqual('offline', result['consistency'])
        self.assertEqual(self.created.id, result['backup_id'])
        self.assertEqual('available', result['status'])
        self.assertFalse(result['is_incremental'])
        self.assertEqual('requested with --via-backup', result['method_reason'])
        self.assertEqual('0123456789ab', result['run_id'])
        self.assertEqual('', self.err.getvalue())
        # waited for the backup, then for the volume to be released
        waited = [c.args[0] for c in self.bs.wait_for_status.call_args_list]
        self.assertEqual([self.created, self.vol], waited)
        # refetched (by the waiting helper): the SDK returns at once on a
        # stale 'available'
        self.bs.get_volume.assert_called_once_with(self.vol.id)
        self.assertEqual(
            'available',
            self.bs.wait_for_status.call_args_list[1].kwargs['status'],
        )

    def test_default_name(self):
        self.run_backup()
        name = self.bs.create_backup.call_args.kwargs['name']
        self.assertTrue(name.startswith('db-backup-'), name)

    def test_in_use_is_forced_and_warned(self):
        vol = fakes.volume(status='in-use', name='db', size=2)
        self.bs.get_volume.side_effect = lambda vid: vol
        result = self.run_backup(vol)
        attrs = self.bs.create_backup.call_args.kwargs
        self.assertIs(True, attrs['force'])
        self.assertEqual('crash-consistent', result['consistency'])
        self.assertEqual(
            'crash-consistent', attrs['metadata']['osc_backup_consistency']
        )
        self.assertIn('crash-consistent', self.err.getvalue())
        self.assertEqual(
            'in-use',
            self.bs.wait_for_status.call_args_list[1].kwargs['status'],
        )

    def test_incremental_with_full_backup(self):
        self.bs.backups.return_value = [backup(status='available')]
        self.created.is_incremental = True
        result = self.run_backup(incremental=True)
        self.bs.backups.assert_called_once_with(volume_id=self.vol.id)
        self.assertTrue(
            self.bs.create_backup.call_args.kwargs['is_incremental']
        )
        self.assertTrue(result['is_incremental'])
        self.assertEqual('', self.err.getvalue())

    def test_incremental_records_its_parent(self):
        # Cinder's rule: the newest available backup by data_timestamp
        older = backup(status='available',
                       data_timestamp='2026-01-01T10:00:00.000000',
                       created_at='2026-01-03T10:00:00.000000')
        newest = backup(status='available',
                        data_timestamp='2026-01-02T10:00:00.000000',
                        created_at='2026-01-02T10:00:00.000000')
        failed = backup(status='error',
                        data_timestamp='2026-01-05T10:00:00.000000')
        self.bs.backups.return_value = [older, failed, newest]
        self.created.is_incremental = True
        self.run_backup(incremental=True)
        metadata = self.bs.create_backup.call_args.kwargs['metadata']
        self.assertEqual(newest.id, metadata['osc_backup_parent_backup_id'])

    def test_full_backup_records_no_parent(self):
        self.bs.backups.return_value = [backup(status='available')]
        self.run_backup()
        metadata = self.bs.create_backup.call_args.kwargs['metadata']
        self.assertNotIn('osc_backup_parent_backup_id', metadata)
        self.bs.backups.assert_not_called()

    def test_incremental_without_full_backup_makes_a_full_one(self):
        self.bs.backups.return_value = [backup(status='error')]
        result = self.run_backup(incremental=True)
        self.assertFalse(
            self.bs.create_backup.call_args.kwargs['is_incremental']
        )
        self.assertFalse(result['is_incremental'])
        self.assertIn('made a full backup instead', self.err.getvalue())
        self.assertIn('made a full backup instead', result['method_reason'])
        metadata = self.bs.create_backup.call_args.kwargs['metadata']
        self.assertNotIn('osc_backup_parent_backup_id', metadata)

    def test_properties_and_zone(self):
        self.run_backup(properties={'k': 'v'}, availability_zone='az2')
        attrs = self.bs.create_backup.call_args.kwargs
        self.assertEqual('v', attrs['metadata']['k'])
        self.assertEqual('az2', attrs['availability_zone'])

    def test_no_wait(self):
        result = self.run_backup(wait=False)
        self.bs.wait_for_status.assert_not_called()
        self.assertEqual('creating', result['status'])

    def test_reserved_property(self):
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup,
            properties={'osc_backup_x': '1'},
        )
        self.assertIn('reserved', str(exc))
        self.bs.create_backup.assert_not_called()

    def test_wrong_status(self):
        vol = fakes.volume(status='error', name='db')
        exc = self.assertRaises(errors.InvalidInput, self.run_backup, vol)
        self.assertIn("is 'error'", str(exc))
        self.bs.create_backup.assert_not_called()

    def test_bad_timeout(self):
        self.assertRaises(errors.InvalidInput, self.run_backup, timeout=0)

    def test_property_needs_343(self):
        self.max_microversion = (3, 40)
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup, properties={'k': 'v'}
        )
        self.assertIn('3.43', str(exc))
        self.bs.create_backup.assert_not_called()

    def test_zone_needs_351(self):
        self.max_microversion = (3, 50)
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup, availability_zone='az'
        )
        self.assertIn('3.51', str(exc))
        self.bs.create_backup.assert_not_called()

    def test_old_cloud_no_metadata(self):
        self.max_microversion = (3, 40)
        self.run_backup()
        self.assertNotIn('metadata', self.bs.create_backup.call_args.kwargs)
        self.assertIn('no backup metadata', self.err.getvalue())

    def test_api_says_no_service(self):
        self.bs.create_backup.side_effect = http_error(
            sdk_exc.HttpException, 503,
            'Service cinder-backup could not be found.',
        )
        exc = self.assertRaises(volume_backup.NoBackupService, self.run_backup)
        self.assertIsNone(exc.leftover)
        self.assertIn('Nothing was created', str(exc))

    def test_api_refuses(self):
        self.bs.create_backup.side_effect = http_error(
            sdk_exc.BadRequestException, 400, 'quota exceeded'
        )
        exc = self.assertRaises(errors.BackupError, self.run_backup)
        self.assertNotIsInstance(exc, volume_backup.NoBackupService)
        self.assertIn('quota exceeded', str(exc))

    def test_scheduler_rejects(self):
        def fail(res, status, **kwargs):
            raise sdk_exc.ResourceFailure('error')

        self.bs.wait_for_status.side_effect = fail
        self.created.status = 'error'
        self.created.fail_reason = 'Service not found for creating backup.'
        exc = self.assertRaises(volume_backup.NoBackupService, self.run_backup)
        self.assertEqual(self.created.id, exc.leftover)
        self.assertIn(
            f'openstack volume backup delete {self.created.id}', str(exc)
        )
        # Cinder would refuse the deletion: not tried, not reported twice
        self.bs.delete_backup.assert_not_called()

    def test_other_failure_deletes_the_backup(self):
        self.created.fail_reason = 'driver exploded'

        def wait(res, status, **kwargs):
            if status == 'available' and res is self.created:
                res.status = 'error'
                raise sdk_exc.ResourceFailure('error')
            return res

        self.bs.wait_for_status.side_effect = wait
        self.bs.get_backup.side_effect = lambda bid: self.created
        self.bs.wait_for_delete.return_value = None
        exc = self.assertRaises(errors.WaitError, self.run_backup)
        self.assertIn('driver exploded', str(exc))
        self.bs.delete_backup.assert_called_once_with(
            self.created, ignore_missing=True
        )

    def test_timeout_deletes_the_backup(self):
        def wait(res, status, **kwargs):
            if res is self.created and status == 'available':
                raise sdk_exc.ResourceTimeout('slow')
            res.status = status
            return res

        self.bs.wait_for_status.side_effect = wait
        self.bs.get_backup.side_effect = lambda bid: backup(
            id=bid, status='available'
        )
        exc = self.assertRaises(errors.WaitTimeout, self.run_backup)
        self.assertIn('Timed out', str(exc))
        self.bs.delete_backup.assert_called_once()
        self.bs.wait_for_delete.assert_called_once()


class TestPickup(BackupTestCase):
    """A backup no backup service takes (Cinder's scheduler sent it to a
    cinder-backup that stopped after it last reported)."""

    def setUp(self):
        super().setUp()
        self.waits = []

        def wait(res, status, **kwargs):
            if res is self.created and status == 'available':
                self.waits.append(kwargs['wait'])
                if len(self.waits) <= self.slow_waits:
                    raise sdk_exc.ResourceTimeout('slow')
            res.status = status
            return res

        self.slow_waits = 1
        self.bs.wait_for_status.side_effect = wait
        self.current = backup(
            id=self.created.id, status='creating', availability_zone=None,
            volume_id=self.vol.id,
        )
        self.bs.get_backup.side_effect = lambda bid: self.current

    def test_not_taken_stops_and_keeps_the_record(self):
        self.slow_waits = 99
        exc = self.assertRaises(
            volume_backup.NotTaken, self.run_backup, pickup_timeout=5
        )
        text = str(exc)
        self.assertIn(f'taken backup {self.created.id} in 5 s', text)
        self.assertIn(f'volume {self.vol.id} backing-up', text)
        self.assertIn(
            f'openstack volume backup set --state error {self.created.id}',
            text,
        )
        self.assertEqual(1, len(self.waits))
        self.assertLessEqual(self.waits[0], 5)
        # it cannot be deleted before a service takes it: not even tried
        self.bs.delete_backup.assert_not_called()

    def test_taken_but_slow_keeps_waiting(self):
        self.current.availability_zone = 'nova'  # a service took it
        result = self.run_backup(pickup_timeout=5)
        self.assertEqual('available', result['status'])
        self.assertEqual(2, len(self.waits))
        self.assertGreater(self.waits[1], 5)

    def test_zone_given_no_pickup_phase(self):
        self.slow_waits = 0
        self.run_backup(availability_zone='nova', pickup_timeout=5)
        self.assertEqual(1, len(self.waits))
        self.assertGreater(self.waits[0], 5)

    def test_interrupt_before_taken_names_the_record(self):
        self.slow_waits = 0

        def wait(res, status, **kwargs):
            if res is self.created:
                raise KeyboardInterrupt()
            return res

        self.bs.wait_for_status.side_effect = wait
        self.assertRaises(KeyboardInterrupt, self.run_backup)
        self.bs.delete_backup.assert_not_called()
        self.assertIn(
            f'openstack volume backup delete {self.created.id}',
            self.err.getvalue(),
        )


class TestPlan(BackupTestCase):
    def test_plan_changes_nothing(self):
        vol = fakes.volume(status='in-use', name='db', size=2)
        result = volume_backup.plan(
            self.conn, vol, volume_backup.Options(incremental=True),
            self.run_ctx,
        )
        self.assertTrue(result['dry_run'])
        self.assertEqual('backup', result['method'])
        self.assertEqual('crash-consistent', result['consistency'])
        self.assertIn('force=true', result['steps'][0])
        self.assertIn('is_incremental=false', result['steps'][0])
        self.assertIn('made a full backup instead', result['steps'][1])
        self.bs.create_backup.assert_not_called()


class TestDetect(BackupTestCase):
    def detect(self, **kwargs):
        return volume_backup.detect(self.conn, self.vol, **kwargs)

    def test_services_api_up(self):
        self.bs.services.return_value = [service()]
        found = self.detect()
        self.bs.services.assert_called_once_with()
        self.assertEqual('backup', found.method)
        self.assertTrue(found.confirmed)
        self.assertIn('services API', found.reason)

    def cloud(self, backup_reported):
        """cinder-volume and cinder-scheduler reported at NOW; the backup
        service at ``backup_reported`` (Cinder still says 'up')."""
        self.bs.services.return_value = [
            service(binary='cinder-scheduler'),
            service(binary='cinder-volume', host='node1@file'),
            service(host='node2', updated_at=backup_reported),
        ]

    def test_backup_service_that_stopped_reporting_is_down(self):
        # crashed 45 s ago: Cinder calls it 'up' for 60 s, but its last
        # report is already far behind the others'
        self.cloud('2026-01-02T03:04:05.000000')
        found = self.detect()
        self.assertEqual('image', found.method)
        self.assertIn('node2', found.reason)
        self.assertIn('has not reported for 45 s', found.reason)

    def test_backup_service_between_reports_is_up(self):
        # a report or two late (report_interval 10 s): still alive
        self.cloud('2026-01-02T03:04:32.000000')
        self.assertEqual('backup', self.detect().method)

    def test_threshold_is_about_three_report_intervals(self):
        self.cloud('2026-01-02T03:04:25.000000')  # 25 s behind
        self.assertEqual('backup', self.detect().method)
        self.cloud('2026-01-02T03:04:15.000000')  # 35 s behind
        self.assertEqual('image', self.detect().method)

    def test_clock_of_the_client_does_not_matter(self):
        # every report is years old by the local clock (a client clock far
        # ahead of the cloud's): only the reports' distance counts
        old = '2001-01-02T03:04:50.000000'
        self.bs.services.return_value = [
            service(binary='cinder-volume', updated_at=old),
            service(updated_at='2001-01-02T03:04:45.000000'),
        ]
        self.assertEqual('backup', self.detect().method)

    def test_unparsable_report_time_trusts_the_state(self):
        self.cloud('yesterday')
        self.assertEqual('backup', self.detect().method)

    def test_services_api_down_or_disabled(self):
        self.bs.services.return_value = [
            service(state='down'), service(status='disabled'),
        ]
        found = self.detect()
        self.assertEqual('image', found.method)
        self.assertIn('none is enabled and up', found.reason.replace(
            'no enabled cinder-backup service is up', 'none is enabled and up'
        ))

    def test_services_api_other_zone(self):
        self.bs.services.return_value = [service(availability_zone='az9')]
        self.assertEqual('image', self.detect().method)
        self.assertEqual(
            'backup', self.detect(availability_zone='az9').method
        )

    def test_services_api_none(self):
        self.bs.services.return_value = []
        found = self.detect()
        self.assertEqual('image', found.method)
        self.assertIn('no cinder-backup service', found.reason)

    def member(self):
        self.bs.services.side_effect = http_error(
            sdk_exc.ForbiddenException, 403, 'Policy does not allow'
        )

    def rejected(self, **md):
        md.setdefault('osc_backup_tool', 'osc-backup')
        return backup(
            status='error',
            fail_reason='Service not found for creating backup.',
            metadata=md,
        )

    def test_member_without_evidence_tries(self):
        self.member()
        self.bs.backups.return_value = [backup(status='error')]
        found = self.detect()
        self.assertEqual('backup', found.method)
        self.assertFalse(found.confirmed)
        self.bs.backups.assert_called_once_with(status='error')
        self.bs.delete_backup.assert_not_called()

    def test_member_rejected_record_still_no_service(self):
        self.member()
        old = self.rejected()
        self.bs.backups.return_value = [old]
        self.bs.delete_backup.side_effect = http_error(
            sdk_exc.NotFoundException, 404,
            'Service cinder-backup could not be found.',
        )
        found = self.detect()
        self.assertEqual('image', found.method)
        self.assertIn(old.id, found.reason)
        self.bs.delete_backup.assert_called_once_with(
            old, ignore_missing=False
        )

    def test_member_rejected_record_service_back(self):
        self.member()
        old = self.rejected()
        self.bs.backups.return_value = [old]
        found = self.detect()
        self.assertEqual('backup', found.method)
        self.assertTrue(found.confirmed)
        self.assertIn('is back', found.reason)

    def test_member_rejected_record_other_error(self):
        self.member()
        self.bs.backups.return_value = [self.rejected()]
        self.bs.delete_backup.side_effect = http_error(
            sdk_exc.HttpException, 500, 'boom'
        )
        found = self.detect()
        self.assertEqual('backup', found.method)
        self.assertFalse(found.confirmed)

    def test_member_ignores_records_not_ours(self):
        self.member()
        self.bs.backups.return_value = [
            self.rejected(osc_backup_tool='someone-else')
        ]
        self.detect()
        self.bs.delete_backup.assert_not_called()

    def test_member_dry_run_does_not_probe(self):
        self.member()
        self.bs.backups.return_value = [self.rejected()]
        found = self.detect(probe=False)
        self.assertEqual('image', found.method)
        self.bs.delete_backup.assert_not_called()

    def test_member_cannot_list_backups(self):
        self.member()
        self.bs.backups.side_effect = http_error(
            sdk_exc.HttpException, 500, 'boom'
        )
        self.assertEqual('backup', self.detect().method)


class TestSupports(base.TestCase):
    def test_discovery_failure_is_no(self):
        adapter = mock.Mock()
        adapter.get_endpoint_data.side_effect = RuntimeError('x')
        self.assertFalse(volume_backup.supports(adapter, '3.43'))

    def test_versions(self):
        adapter = mock.Mock()
        adapter.get_endpoint_data.return_value = mock.Mock(
            min_microversion='3.0', max_microversion='3.50'
        )
        adapter.default_microversion = None
        self.assertTrue(volume_backup.supports(adapter, '3.43'))
        self.assertFalse(volume_backup.supports(adapter, '3.51'))
