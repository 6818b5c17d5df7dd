import io
from unittest import mock

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common.progress import Reporter
from osc_backup.procedures import volume_image
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes


class ProcedureTestCase(base.TestCase):
    """A fake cloud whose waits succeed unless a test says otherwise."""

    microversion = '3.65'

    def setUp(self):
        super().setUp()
        self.bs, self.image_proxy = fakes.make_proxies()
        self.conn = mock.Mock(block_storage=self.bs, image=self.image_proxy)
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)
        self.run_ctx = tags.Run(run_id='0123456789ab')
        self.snap = fakes.snapshot(status='creating')
        fakes.cinder_makes_snapshots(self.bs, self.snap, self.microversion)
        self.tmp_vol = fakes.volume(status='creating', name='tmp')
        # the image Cinder makes: queued under the name it was given; the
        # waits below make it active
        self.image = fakes.image(
            status='queued', name='osc-backup-tmp-0123456789ab-image-of-v',
            properties={},
        )
        self.active = self.image
        self.glance = fakes.FakeGlance(self.image_proxy, self.image)
        self.bs.create_volume.return_value = self.tmp_vol
        self.bs.upload_volume_to_image.return_value = {
            'image_id': self.image.id,
            'status': 'uploading',
        }
        self.bs.wait_for_status.side_effect = self._bs_wait
        self.image_proxy.wait_for_status.side_effect = self._bs_wait
        # Cinder marks what it accepted to delete 'deleting' before it
        # answers
        self.bs.delete_snapshot.side_effect = self._deleting
        self.bs.delete_volume.side_effect = self._deleting
        # Lookups return the objects the fake cloud made (so waits see
        # them); anything else is found 'available'.
        self.known = {self.snap.id: self.snap, self.tmp_vol.id: self.tmp_vol}
        self.bs.get_volume.side_effect = lambda vid: self.known.get(
            vid
        ) or fakes.volume(id=vid, status='available')
        self.bs.get_snapshot.side_effect = lambda sid: self.known.get(
            sid
        ) or fakes.snapshot(id=sid, status='available')

    def useFixture_patch(self, target, **kwargs):
        patcher = mock.patch(target, **kwargs)
        self.addCleanup(patcher.stop)
        return patcher.start()

    def _deleting(self, res, ignore_missing=True):
        # the cloud's state, whatever object the request was given
        for same in (res, self.known.get(res.id)):
            if same is not None:
                same.status = 'deleting'

    def _bs_wait(self, res, status, **kwargs):
        res.status = status
        return res

    def run_backup(self, volume, **opts):
        options = volume_image.Options(interval=0, **opts)
        return volume_image.backup_volume_via_image(
            self.conn, volume, options, run=self.run_ctx,
            reporter=self.reporter,
        )

    def deleted_volumes(self):
        return [c.args[0].id for c in self.bs.delete_volume.call_args_list]

    def deleted_snapshots(self):
        return [c.args[0].id for c in self.bs.delete_snapshot.call_args_list]


class TestAvailableVolume(ProcedureTestCase):
    def test_upload_directly(self):
        vol = fakes.volume(status='available', name='db', size=2)
        result = self.run_backup(vol, name='b1')
        self.bs.post.assert_not_called()
        self.bs.create_volume.assert_not_called()
        # uploaded under the run's temporary name, renamed with the record
        self.bs.upload_volume_to_image.assert_called_once_with(
            vol, 'osc-backup-tmp-0123456789ab-image-of-db', force=False,
            disk_format='raw', container_format='bare',
        )
        self.image_proxy.wait_for_status.assert_called_once_with(
            self.image, status='active',
            failures=['killed', 'deleted', 'pending_delete', 'deactivated'],
            interval=0, wait=mock.ANY,
        )
        # the volume must be released again before we report success
        waited = self.bs.wait_for_status.call_args
        self.assertIs(vol, waited.args[0])
        self.assertEqual('available', waited.kwargs['status'])
        self.assertEqual('offline', result['consistency'])
        self.assertEqual('image', result['method'])
        self.assertEqual('requested with --via-image', result['method_reason'])
        self.assertEqual(self.image.id, result['image_id'])
        self.assertEqual('active', result['status'])
        self.assertEqual('b1', result['name'])
        self.assertEqual('b1', self.image.name)
        self.assertEqual(vol.id, result['source_volume_id'])
        self.assertEqual('db', result['source_volume_name'])
        self.assertEqual('0123456789ab', result['run_id'])
        self.assertNotIn('WARNING', self.err.getvalue())
        self.image_proxy.delete_image.assert_not_called()

    def test_records_properties(self):
        vol = fakes.volume(
            status='available', name='db', size=3, volume_type='fast',
            is_bootable=True,
        )
        self.run_backup(
            vol, description='nightly', properties={'team': 'ops'}
        )
        props = self.image.properties
        self.assertEqual(vol.id, props['osc_backup_source_volume_id'])
        self.assertEqual('db', props['osc_backup_source_volume_name'])
        self.assertEqual('fast', props['osc_backup_volume_type'])
        self.assertEqual('3', props['osc_backup_volume_size_gb'])
        self.assertEqual('true', props['osc_backup_bootable'])
        self.assertEqual('offline', props['osc_backup_consistency'])
        self.assertEqual('0123456789ab', props['osc_backup_run_id'])
        self.assertEqual('osc-backup', props['osc_backup_tool'])
        self.assertIn('osc_backup_tool_version', props)
        self.assertIn('osc_backup_created_at', props)
        self.assertEqual('ops', props['team'])
        self.assertEqual('nightly', props['description'])
        # one patch: record and final name together
        self.assertEqual(1, len(self.glance.patches))

    def test_inherited_record_is_replaced_not_merged(self):
        # The volume was restored from an older backup image: Cinder copied
        # that image's record into the new image on upload.
        old = {
            'osc_backup_tool': 'osc-backup',
            'osc_backup_run_id': 'aaaaaaaaaaaa',
            'osc_backup_source_volume_id': 'old-source',
            'osc_backup_volume_size_gb': '9',
            'osc_backup_server_id': 'old-server',
            'osc_backup_device': '/dev/vdb',
            'osc_backup_encryption_key_id': 'old-key',
            'hw_disk_bus': 'scsi',
        }
        self.image.properties = dict(old)
        vol = fakes.volume(
            status='available', name='db', size=1,
            volume_image_metadata=dict(old),
        )
        self.run_backup(vol)
        props = self.image.properties
        self.assertEqual(vol.id, props['osc_backup_source_volume_id'])
        self.assertEqual('1', props['osc_backup_volume_size_gb'])
        self.assertEqual('0123456789ab', props['osc_backup_run_id'])
        for stale in ('osc_backup_server_id', 'osc_backup_device',
                      'osc_backup_encryption_key_id'):
            self.assertNotIn(stale, props)
        # not ours: kept
        self.assertEqual('scsi', props['hw_disk_bus'])

    def test_record_failure_keeps_the_image(self):
        vol = fakes.volume(status='available', name='db')
        self.image_proxy.patch.side_effect = lambda *a, **k: (
            fakes.response(413, {'message': 'Attribute quota exceeded'})
        )
        exc = self.assertRaises(
            volume_image.RecordNotWritten, self.run_backup, vol, name='b1'
        )
        self.assertEqual(self.image.id, exc.image_id)
        text = str(exc)
        self.assertIn(f'backup image {self.image.id}', text)
        self.assertIn('complete and kept', text)
        self.assertIn('could not be written', text)
        self.image_proxy.delete_image.assert_not_called()
        # renamed at least, so that `backup cleanup` leaves it alone
        self.assertEqual('b1', self.image.name)
        self.assertIn("It is named 'b1'", text)

    def test_record_and_rename_failure_says_how_to_keep_it(self):
        vol = fakes.volume(status='available', name='db')
        self.image_proxy.patch.side_effect = sdk_exc.HttpException(
            'Glance is down'
        )
        self.image_proxy.update_image.side_effect = sdk_exc.HttpException(
            'Glance is down'
        )
        exc = self.assertRaises(
            volume_image.RecordNotWritten, self.run_backup, vol,
            name="it's mine",
        )
        self.image_proxy.delete_image.assert_not_called()
        self.assertIn('openstack backup cleanup', str(exc))
        self.assertIn(
            f"openstack image set --name 'it'\"'\"'s mine' {self.image.id}",
            str(exc),
        )

    def test_record_failure_in_use_still_removes_temporaries(self):
        self.image_proxy.patch.side_effect = lambda *a, **k: (
            fakes.response(403, {'message': 'forbidden'})
        )
        self.assertRaises(
            volume_image.RecordNotWritten, self.run_backup,
            fakes.volume(status='in-use'),
        )
        self.assertEqual([self.tmp_vol.id], self.deleted_volumes())
        self.assertEqual([self.snap.id], self.deleted_snapshots())
        self.image_proxy.delete_image.assert_not_called()

    def test_default_name_from_volume_and_time(self):
        vol = fakes.volume(status='available', name='db data')
        result = self.run_backup(vol)
        self.assertRegex(
            result['name'], r'^db-data-backup-\d{8}T\d{6}Z-012345$'
        )
        self.assertEqual(result['name'], self.image.name)

    def test_no_wait(self):
        vol = fakes.volume(status='available', name='db')
        result = self.run_backup(vol, wait=False, name='b1')
        self.image_proxy.wait_for_status.assert_not_called()
        self.bs.wait_for_status.assert_not_called()
        self.assertEqual('queued', result['status'])
        # no property update may race with the upload; no rename either,
        # so the final name from the start
        self.assertEqual([], self.glance.patches)
        self.image_proxy.update_image.assert_not_called()
        self.assertEqual('b1', self.bs.upload_volume_to_image.call_args.args[1])
        self.assertIn('--no-wait', self.err.getvalue())

    def test_no_wait_refused_for_a_volume_with_an_inherited_record(self):
        vol = fakes.volume(
            status='available',
            volume_image_metadata={'osc_backup_run_id': 'aaaaaaaaaaaa'},
        )
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup, vol, wait=False
        )
        self.assertIn('osc_backup_run_id', str(exc))
        self.bs.upload_volume_to_image.assert_not_called()

    def test_record_written_only_after_active(self):
        events = []

        def active(res, status, **kwargs):
            events.append('active')
            res.status = status
            return res

        def patch(*args, **kwargs):
            events.append('record')
            return self.glance.patch(*args, **kwargs)

        self.image_proxy.wait_for_status.side_effect = active
        self.image_proxy.patch.side_effect = patch
        self.run_backup(fakes.volume(status='available'))
        self.assertEqual(['active', 'record'], events)
        self.assertEqual(
            f'/images/{self.image.id}',
            self.image_proxy.patch.call_args.args[0],
        )

    def test_source_released_after_it_was_seen_uploading(self):
        # The image is active, but the volume stays 'uploading' until the
        # deadline: the run fails, and its cleanup waits for the source to
        # be 'available' again (the object in hand says 'uploading' by now)
        vol = fakes.volume(status='available')
        statuses = []

        def wait(res, status, **kwargs):
            statuses.append(status)
            if res is vol and len(statuses) == 1:
                raise sdk_exc.ResourceTimeout('slow')
            res.status = status
            return res

        self.bs.wait_for_status.side_effect = wait
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='uploading'
        )
        self.assertRaises(errors.WaitTimeout, self.run_backup, vol)
        self.assertEqual(['available', 'available'], statuses)

    def test_image_killed_deletes_image_and_waits_for_source(self):
        vol = fakes.volume(status='available')
        self.image_proxy.wait_for_status.side_effect = (
            sdk_exc.ResourceFailure('killed')
        )
        self.image_proxy.get_image.side_effect = [
            self.image, fakes.image(id=self.image.id, status='killed'),
        ]
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='uploading'
        )
        exc = self.assertRaises(errors.WaitError, self.run_backup, vol)
        self.assertIn("went to status 'killed'", str(exc))
        self.image_proxy.delete_image.assert_called_once_with(
            self.image.id, ignore_missing=True
        )
        # source volume was waited out of 'uploading', never deleted
        self.bs.delete_volume.assert_not_called()
        self.assertEqual(
            'available', self.bs.wait_for_status.call_args.kwargs['status']
        )


class TestInUseVolume(ProcedureTestCase):
    def test_snapshot_temporary_volume_upload_cleanup(self):
        vol = fakes.volume(status='in-use', name='db', size=4)
        result = self.run_backup(vol, name='b2')
        snap_attrs, version = fakes.sent_snapshot(self.bs)
        self.assertEqual('3.65', version)
        self.assertEqual(vol.id, snap_attrs['volume_id'])
        self.assertTrue(snap_attrs['force'])
        self.assertEqual('true', snap_attrs['metadata']['osc_backup_temporary'])
        self.assertEqual(
            '0123456789ab', snap_attrs['metadata']['osc_backup_run_id']
        )
        self.assertTrue(snap_attrs['name'].startswith('osc-backup-tmp-'))
        vol_attrs = self.bs.create_volume.call_args.kwargs
        self.assertEqual(self.snap.id, vol_attrs['snapshot_id'])
        self.assertEqual(4, vol_attrs['size'])
        self.assertEqual('true', vol_attrs['metadata']['osc_backup_temporary'])
        # the temporary volume is uploaded, not the attached one
        self.assertIs(
            self.tmp_vol, self.bs.upload_volume_to_image.call_args.args[0]
        )
        self.assertEqual([self.tmp_vol.id], self.deleted_volumes())
        self.assertEqual([self.snap.id], self.deleted_snapshots())
        self.assertEqual(2, self.bs.wait_for_delete.call_count)
        self.assertEqual('crash-consistent', result['consistency'])
        self.assertIn('crash-consistent', self.err.getvalue())
        self.assertIn('WARNING', self.err.getvalue())
        props = self.image.properties
        self.assertEqual(vol.id, props['osc_backup_source_volume_id'])
        self.assertEqual(
            'crash-consistent', props['osc_backup_consistency']
        )

    def test_snapshot_released_once_the_volume_is_available(self):
        # the snapshot's deletion is requested as soon as the temporary
        # volume is available (it runs during the upload), once; at the end
        # the volume is deleted and the snapshot waited for
        order = []

        def record(what):
            def call(res, *args, **kwargs):
                order.append(what)
                if what.startswith('delete'):
                    self._deleting(res)
                return {'image_id': self.image.id} if what == 'upload' \
                    else None
            return call

        self.bs.delete_volume.side_effect = record('delete volume')
        self.bs.delete_snapshot.side_effect = record('delete snapshot')
        self.bs.upload_volume_to_image.side_effect = record('upload')
        self.bs.wait_for_delete.side_effect = (
            lambda res, **k: order.append(f'gone {res.id}')
        )
        self.run_backup(fakes.volume(status='in-use'))
        self.assertEqual(
            ['delete snapshot', 'upload', 'delete volume',
             f'gone {self.tmp_vol.id}', f'gone {self.snap.id}'],
            order,
        )

    def test_snapshot_refused_while_its_volume_exists_is_asked_again(self):
        # a driver that refuses: Cinder puts the snapshot back to
        # 'available'; it is deleted again once the volume is gone
        requests = []

        def delete_snapshot(res, **kwargs):
            requests.append('snapshot')
            self._deleting(res)

        def delete_volume(res, **kwargs):
            requests.append('volume')
            self._deleting(res)

        def gone(res, callback=None, **kwargs):
            if res.id == self.snap.id and requests.count('snapshot') == 1:
                res.status = self.snap.status = 'available'  # refused
                callback(0)
            return None

        self.bs.delete_snapshot.side_effect = delete_snapshot
        self.bs.delete_volume.side_effect = delete_volume
        self.bs.wait_for_delete.side_effect = gone
        self.run_backup(fakes.volume(status='in-use'))
        self.assertEqual(['snapshot', 'volume', 'snapshot'], requests)

    def test_snapshot_error_cleans_snapshot(self):
        def wait(res, status, **kw):
            if res.id == self.snap.id:
                raise sdk_exc.ResourceFailure('error')
            res.status = status
            return res

        self.bs.wait_for_status.side_effect = wait
        self.bs.get_snapshot.side_effect = lambda sid: fakes.snapshot(
            id=sid, status='error'
        )
        exc = self.assertRaises(
            errors.WaitError, self.run_backup, fakes.volume(status='in-use')
        )
        self.assertIn('create temporary snapshot', str(exc))
        self.assertIn(self.snap.id, str(exc))
        self.bs.create_volume.assert_not_called()
        self.bs.upload_volume_to_image.assert_not_called()
        self.assertEqual([self.snap.id], self.deleted_snapshots())

    def test_temporary_volume_error_cleans_both(self):
        def wait(res, status, **kw):
            if res is self.tmp_vol:
                raise sdk_exc.ResourceFailure('error')
            res.status = status
            return res

        self.bs.wait_for_status.side_effect = wait
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='error'
        )
        exc = self.assertRaises(
            errors.WaitError, self.run_backup, fakes.volume(status='in-use')
        )
        self.assertIn('create temporary volume from snapshot', str(exc))
        self.bs.upload_volume_to_image.assert_not_called()
        self.assertEqual([self.tmp_vol.id], self.deleted_volumes())
        self.assertEqual([self.snap.id], self.deleted_snapshots())

    def test_upload_failure_cleans_both(self):
        self.bs.upload_volume_to_image.side_effect = sdk_exc.HttpException(
            'quota exceeded'
        )
        self.assertRaises(
            sdk_exc.HttpException,
            self.run_backup,
            fakes.volume(status='in-use'),
        )
        self.assertEqual([self.tmp_vol.id], self.deleted_volumes())
        self.assertEqual([self.snap.id], self.deleted_snapshots())
        self.image_proxy.delete_image.assert_not_called()

    def test_image_timeout_cleans_everything(self):
        self.image_proxy.wait_for_status.side_effect = (
            sdk_exc.ResourceTimeout('t')
        )
        self.image_proxy.get_image.side_effect = [
            self.image, fakes.image(id=self.image.id, status='saving'),
        ]
        exc = self.assertRaises(
            errors.WaitTimeout, self.run_backup,
            fakes.volume(status='in-use'), timeout=30,
        )
        self.assertIn("'saving'", str(exc))
        self.image_proxy.delete_image.assert_called_once_with(
            self.image.id, ignore_missing=True
        )
        self.assertEqual([self.tmp_vol.id], self.deleted_volumes())
        self.assertEqual([self.snap.id], self.deleted_snapshots())

    def test_ctrl_c_during_upload_cleans_everything(self):
        self.image_proxy.wait_for_status.side_effect = KeyboardInterrupt()
        self.assertRaises(
            KeyboardInterrupt, self.run_backup, fakes.volume(status='in-use')
        )
        self.image_proxy.delete_image.assert_called_once()
        self.assertEqual([self.tmp_vol.id], self.deleted_volumes())
        self.assertEqual([self.snap.id], self.deleted_snapshots())

    def test_busy_temporary_volume_is_waited_out_before_delete(self):
        self.image_proxy.wait_for_status.side_effect = KeyboardInterrupt()
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='uploading'
        )
        self.assertRaises(
            KeyboardInterrupt, self.run_backup, fakes.volume(status='in-use')
        )
        statuses = [
            c.kwargs['status'] for c in self.bs.wait_for_status.call_args_list
        ]
        self.assertEqual('available', statuses[-1])
        self.assertEqual([self.tmp_vol.id], self.deleted_volumes())

    def test_temporary_volume_that_failed_is_deleted_as_it_is(self):
        # e.g. interrupted while it was being made from the snapshot
        self.image_proxy.wait_for_status.side_effect = KeyboardInterrupt()
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='creating'
        )

        seen = []

        def wait(res, status, **kwargs):
            seen.append(res.id)
            # made once; in cleanup, it goes to error instead
            if res.id == self.tmp_vol.id and seen.count(res.id) > 1:
                raise sdk_exc.ResourceFailure('went to error')
            res.status = status
            return res

        self.bs.wait_for_status.side_effect = wait
        self.assertRaises(
            KeyboardInterrupt, self.run_backup, fakes.volume(status='in-use')
        )
        self.assertEqual([self.tmp_vol.id], self.deleted_volumes())
        self.assertEqual([self.snap.id], self.deleted_snapshots())

    def test_cleanup_failure_names_leftovers(self):
        self.bs.delete_snapshot.side_effect = sdk_exc.HttpException('busy')
        exc = self.assertRaises(
            errors.CleanupError, self.run_backup,
            fakes.volume(status='in-use'),
        )
        text = str(exc)
        self.assertIn('The backup succeeded', text)
        self.assertIn(self.image.id, text)
        self.assertIn(f'openstack volume snapshot delete {self.snap.id}', text)
        self.assertIn('openstack backup cleanup --run-id 0123456789ab', text)

    def test_keep_temporary(self):
        self.run_backup(fakes.volume(status='in-use'), keep_temporary=True)
        # not even released early
        self.bs.delete_volume.assert_not_called()
        self.bs.delete_snapshot.assert_not_called()
        self.assertIn(
            f'openstack volume delete {self.tmp_vol.id}', self.err.getvalue()
        )

    def test_no_wait_refused_before_anything(self):
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup,
            fakes.volume(status='in-use'), wait=False,
        )
        self.assertIn('--no-wait', str(exc))
        self.bs.post.assert_not_called()


class TestInUseVolumeNewMicroversion(ProcedureTestCase):
    microversion = '3.66'

    def test_no_force_from_3_66(self):
        self.run_backup(fakes.volume(status='in-use'))
        body, version = fakes.sent_snapshot(self.bs)
        self.assertEqual('3.66', version)
        self.assertNotIn('force', body)


class TestPreflight(ProcedureTestCase):
    def test_bad_statuses_create_nothing(self):
        for status in ('error', 'creating', 'backing-up', 'maintenance',
                       'reserved', 'uploading', 'deleting', 'attaching'):
            vol = fakes.volume(status=status, name='v')
            exc = self.assertRaises(errors.InvalidInput, self.run_backup, vol)
            self.assertIn(f"'{status}'", str(exc))
        self.bs.post.assert_not_called()
        self.bs.upload_volume_to_image.assert_not_called()

    def test_encrypted_needs_raw_bare(self):
        vol = fakes.volume(is_encrypted=True)
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup, vol, disk_format='qcow2'
        )
        self.assertIn('encrypted', str(exc))
        self.bs.upload_volume_to_image.assert_not_called()

    def test_encrypted_notice(self):
        self.run_backup(fakes.volume(is_encrypted=True))
        self.assertIn('cinder_encryption_key_id', self.err.getvalue())

    def test_reserved_property(self):
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup, fakes.volume(),
            properties={'osc_backup_run_id': 'x'},
        )
        self.assertIn('reserved', str(exc))

    def test_plan_changes_nothing(self):
        vol = fakes.volume(status='in-use', name='db')
        plan = volume_image.plan(
            self.conn, vol, volume_image.Options(name='n'), self.run_ctx
        )
        self.assertTrue(plan['dry_run'])
        self.assertEqual('crash-consistent', plan['consistency'])
        self.assertIn('force=true', plan['steps'][0])
        self.assertIn('3.65', plan['steps'][0])
        self.bs.post.assert_not_called()
        self.bs.create_volume.assert_not_called()
        self.bs.upload_volume_to_image.assert_not_called()


class TestDownload(ProcedureTestCase):
    def setUp(self):
        super().setUp()
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.addCleanup(__import__('shutil').rmtree, self.dir)
        self.save = self.useFixture_patch('osc_backup.procedures.image_save.save_image')
        self.save.return_value.files = ['a.raw', 'a.json', 'a.sha256']

    def test_download_after_active_and_cleanup(self):
        events = []
        self.bs.delete_volume.side_effect = (
            lambda *a, **k: events.append('cleanup')
        )
        self.save.side_effect = lambda *a, **k: (
            events.append('download') or self.save.return_value
        )
        result = self.run_backup(
            fakes.volume(status='in-use'), download=self.dir
        )
        self.assertEqual(['cleanup', 'download'], events)
        self.assertEqual(self.active.id, self.save.call_args.args[1])
        self.assertEqual(self.dir, self.save.call_args.args[2])
        self.assertEqual(['a.raw', 'a.json', 'a.sha256'], result['files'])

    def test_failed_download_keeps_the_image(self):
        self.save.side_effect = errors.BackupError('connection reset.')
        exc = self.assertRaises(
            errors.BackupError, self.run_backup, fakes.volume(),
            download=self.dir,
        )
        self.assertIn('is active and complete', str(exc))
        self.assertIn(f'openstack backup image save --dir {self.dir}',
                      str(exc))
        self.image_proxy.delete_image.assert_not_called()

    def test_bad_directory_refused_before_anything(self):
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup, fakes.volume(),
            download=self.dir + '/missing',
        )
        self.assertIn('does not exist', str(exc))
        self.bs.upload_volume_to_image.assert_not_called()

    def test_no_space_refused_before_anything(self):
        self.assertRaises(
            errors.InvalidInput, self.run_backup,
            fakes.volume(size=10 ** 6), download=self.dir,
        )
        self.bs.upload_volume_to_image.assert_not_called()

    def test_no_wait_refused(self):
        exc = self.assertRaises(
            errors.InvalidInput, self.run_backup, fakes.volume(),
            download=self.dir, wait=False,
        )
        self.assertIn('--no-wait', str(exc))
        self.save.assert_not_called()


class TestDeleteSnapshot(base.TestCase):
    """volumes.delete_snapshot: a deletion already requested is waited for,
    a refusal is asked again once, a second refusal is an error."""

    def setUp(self):
        super().setUp()
        self.bs, _ = fakes.make_proxies()
        self.snap = fakes.snapshot(status='deleting')
        self.bs.get_snapshot.return_value = self.snap

    def test_requested_already_is_only_waited_for(self):
        volumes.delete_snapshot(self.bs, self.snap.id, step='s', interval=0)
        self.bs.delete_snapshot.assert_not_called()
        self.bs.wait_for_delete.assert_called_once()

    def test_refused_twice_is_an_error(self):
        def refused(res, callback=None, **kwargs):
            res.status = 'available'
            callback(0)

        self.bs.wait_for_delete.side_effect = refused
        self.assertRaises(
            errors.DeleteRefused, volumes.delete_snapshot, self.bs,
            self.snap.id, step='s', interval=0,
        )
        self.assertEqual(1, self.bs.delete_snapshot.call_count)
        self.assertEqual(2, self.bs.wait_for_delete.call_count)
