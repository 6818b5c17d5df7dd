import io
from unittest import mock

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common.progress import Reporter
from osc_backup.procedures import volume_backup
from osc_backup.procedures import volume_restore
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.tests.unit.test_volume_backup import backup
from osc_backup.tests.unit.test_volume_backup import http_error

RECORD = {
    'osc_backup_tool': 'osc-backup',
    'osc_backup_method': 'backup',
    'osc_backup_volume_type': 'luks',
    'osc_backup_volume_size_gb': '2',
    'osc_backup_bootable': 'true',
    'osc_backup_source_volume_id': 'src-id',
    'osc_backup_source_volume_name': 'db',
    'unrelated': 'x',
}


class RestoreTestCase(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, self.image_proxy = fakes.make_proxies()
        self.conn = mock.Mock(block_storage=self.bs, image=self.image_proxy)
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)
        self.run_ctx = tags.Run(run_id='0123456789ab')
        self.backup = backup(status='available', size=2, metadata=RECORD)
        props = dict(RECORD, osc_backup_method='image')
        self.image = fakes.image(
            status='active', size=2 * 1024**3, properties=props, min_disk=0,
            name='img',
        )
        self.new = fakes.volume(
            status='creating', name='new', size=2, volume_type='luks',
            is_bootable=False, availability_zone='nova',
        )
        self.bs.create_volume.return_value = self.new
        self.bs.update_volume.side_effect = self._update
        self.bs.wait_for_status.side_effect = self._wait
        self.bs.get_volume.side_effect = lambda vid: self.new
        self.bs.get_backup.side_effect = lambda bid: self.backup
        self.bs.find_type.return_value = mock.Mock(id='t')
        self.bs.find_backup.return_value = None
        self.image_proxy.find_image.return_value = None

    def _wait(self, res, status, **kwargs):
        res.status = status
        return res

    def _update(self, vol, **attrs):
        for key, value in attrs.items():
            setattr(vol, key, value)
        return vol

    def source(self, kind='backup'):
        res = self.backup if kind == 'backup' else self.image
        return volume_restore.Source(kind, res)

    def restore(self, source=None, **opts):
        options = volume_restore.Options(interval=0, **opts)
        return volume_restore.restore(
            self.conn, source or self.source(), options, run=self.run_ctx,
            reporter=self.reporter,
        )


class TestFindSource(RestoreTestCase):
    def test_backup(self):
        self.bs.find_backup.return_value = self.backup
        found = volume_restore.find_source(self.conn, 'b')
        self.assertEqual('backup', found.kind)
        self.bs.find_backup.assert_called_once_with('b', ignore_missing=True)
        self.image_proxy.find_image.assert_called_once_with(
            'b', ignore_missing=True
        )

    def test_image(self):
        self.image_proxy.find_image.return_value = self.image
        self.assertEqual(
            'image', volume_restore.find_source(self.conn, 'i').kind
        )

    def test_neither(self):
        exc = self.assertRaises(
            errors.InvalidInput, volume_restore.find_source, self.conn, 'x'
        )
        self.assertEqual(
            "No backup or image with name or ID 'x' found.", str(exc)
        )

    def test_both(self):
        self.bs.find_backup.return_value = self.backup
        self.image_proxy.find_image.return_value = self.image
        exc = self.assertRaises(
            errors.InvalidInput, volume_restore.find_source, self.conn, 'x'
        )
        self.assertIn('names both', str(exc))

    def test_duplicate(self):
        self.bs.find_backup.side_effect = sdk_exc.DuplicateResource('two')
        exc = self.assertRaises(
            errors.InvalidInput, volume_restore.find_source, self.conn, 'x'
        )
        self.assertIn('More than one backup', str(exc))

    def test_record_keeps_only_our_keys(self):
        self.assertNotIn('unrelated', self.source().record)
        self.assertEqual('luks', self.source('image').record[
            'osc_backup_volume_type'
        ])


class TestRestoreBackup(RestoreTestCase):
    def test_new_volume_of_recorded_type(self):
        result = self.restore(availability_zone='nova')
        attrs = self.bs.create_volume.call_args.kwargs
        self.assertEqual(2, attrs['size'])
        self.assertEqual('luks', attrs['volume_type'])
        self.assertEqual('nova', attrs['availability_zone'])
        # created under the run's temporary name, marked temporary ...
        self.assertTrue(attrs['name'].startswith(
            'osc-backup-tmp-0123456789ab-restore-of-db-restore-'
        ), attrs['name'])
        self.assertEqual('true', attrs['metadata']['osc_backup_temporary'])
        self.assertEqual(
            f'backup:{self.backup.id}',
            attrs['metadata']['osc_backup_restored_from'],
        )
        # ... and given its final name and metadata once restored
        self.assertTrue(result['name'].startswith('db-restore-'))
        self.bs.set_volume_metadata.assert_called_once_with(
            self.new.id, osc_backup_tool='osc-backup',
            osc_backup_run_id='0123456789ab',
            osc_backup_restored_from=f'backup:{self.backup.id}',
        )
        self.bs.delete_volume_metadata.assert_called_once_with(
            self.new.id, keys=['osc_backup_temporary']
        )
        self.assertNotIn('image_id', attrs)
        self.bs.find_type.assert_called_once_with(
            'luks', ignore_missing=False
        )
        self.bs.restore_backup.assert_called_once_with(
            self.backup, self.new.id
        )
        # bootable flag recorded true, new volume false: set it
        self.bs.set_volume_bootable_status.assert_called_once_with(
            self.new, True
        )
        self.assertEqual(self.new.id, result['volume_id'])
        self.assertEqual('backup', result['source_kind'])
        self.assertEqual('src-id', result['source_volume_id'])
        self.assertIn('new volume', result['restore_method'])
        statuses = [
            (c.args[0], c.kwargs['status'])
            for c in self.bs.wait_for_status.call_args_list
        ]
        self.assertEqual(
            [(self.new, 'available'), (self.new, 'available'),
             (self.backup, 'available')],
            statuses,
        )

    def test_restore_call_fits_every_supported_openstacksdk(self):
        # Proxy.restore_backup(backup, volume_id=None, name=None) up to
        # openstacksdk 4.13 (the floor is 4.5), (backup, volume=None,
        # name=None) from 4.14 on: the call must bind to both, and the
        # target must be the new volume either way.
        def up_to_4_13(backup, volume_id=None, name=None):
            return volume_id

        def from_4_14(backup, volume=None, name=None):
            return volume

        self.restore()
        call = self.bs.restore_backup.call_args
        for signature in (up_to_4_13, from_4_14):
            self.assertEqual(
                self.new.id, signature(*call.args, **call.kwargs),
                signature.__name__,
            )

    def test_type_name_and_description_given(self):
        result = self.restore(volume_type='file', name='n', description='d')
        attrs = self.bs.create_volume.call_args.kwargs
        self.assertEqual('file', attrs['volume_type'])
        self.assertEqual(
            'osc-backup-tmp-0123456789ab-restore-of-n', attrs['name']
        )
        self.assertEqual('n', result['name'])
        self.assertEqual('d', attrs['description'])

    def test_no_record_default_type(self):
        self.backup.metadata = {}
        self.backup.name = 'plain'
        result = self.restore()
        attrs = self.bs.create_volume.call_args.kwargs
        self.assertNotIn('volume_type', attrs)
        self.assertTrue(result['name'].startswith('plain-restore-'))
        self.bs.set_volume_bootable_status.assert_not_called()

    def test_unknown_recorded_type(self):
        self.bs.find_type.side_effect = sdk_exc.NotFoundException('no')
        exc = self.assertRaises(errors.InvalidInput, self.restore)
        self.assertIn("recorded volume type 'luks' does not exist", str(exc))
        self.bs.create_volume.assert_not_called()

    def test_unknown_given_type(self):
        self.bs.find_type.side_effect = sdk_exc.NotFoundException('no')
        exc = self.assertRaises(
            errors.InvalidInput, self.restore, volume_type='zz'
        )
        self.assertIn("given volume type 'zz'", str(exc))

    def test_backup_not_available(self):
        self.backup.status = 'creating'
        exc = self.assertRaises(errors.InvalidInput, self.restore)
        self.assertIn("is 'creating'", str(exc))
        self.bs.create_volume.assert_not_called()

    def test_restore_fails_deletes_new_volume(self):
        def wait(res, status, **kwargs):
            if res.id == self.new.id and self.bs.restore_backup.called:
                raise sdk_exc.ResourceFailure('error_restoring')
            res.status = status
            return res

        self.bs.wait_for_status.side_effect = wait
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='error_restoring'
        )
        exc = self.assertRaises(errors.WaitError, self.restore)
        self.assertIn('restore backup', str(exc))
        self.bs.delete_volume.assert_called_once()
        self.assertEqual(
            self.new.id, self.bs.delete_volume.call_args.args[0].id
        )

    def test_cinder_refuses_restore(self):
        self.bs.restore_backup.side_effect = http_error(
            sdk_exc.NotFoundException, 404,
            'Service cinder-backup could not be found.',
        )
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='available'
        )
        exc = self.assertRaises(errors.BackupError, self.restore)
        self.assertIn('could not be found', str(exc))
        self.bs.delete_volume.assert_called_once()

    def test_no_wait(self):
        result = self.restore(wait=False)
        # the target volume must exist before the restore call
        self.assertEqual(1, self.bs.wait_for_status.call_count)
        self.bs.restore_backup.assert_called_once()
        # in Cinder's hands now: final name, no temporary mark
        self.assertTrue(result['name'].startswith('db-restore-'))
        self.bs.delete_volume_metadata.assert_called_once_with(
            self.new.id, keys=['osc_backup_temporary']
        )

    def test_no_wait_does_not_set_bootable_while_restoring(self):
        # recorded bootable, the new volume is not (yet): setting the flag
        # now would race with the restore; the note says how to set it
        result = self.restore(wait=False)
        self.bs.set_volume_bootable_status.assert_not_called()
        self.assertIn(
            f'openstack volume set --bootable {self.new.id}',
            self.err.getvalue(),
        )
        self.assertIs(False, result['bootable'])

    def test_kept_temporary_for_the_caller_to_finish(self):
        # backup server restore: the volume keeps its temporary name and
        # mark (set again: Cinder's restore replaced the metadata with
        # the backed-up volume's, which may name another run)
        result = self.restore(name='web-vdb', rename=False)
        self.bs.update_volume.assert_not_called()
        self.bs.delete_volume_metadata.assert_not_called()
        mark = {
            'osc_backup_tool': 'osc-backup',
            'osc_backup_run_id': '0123456789ab',
            'osc_backup_restored_from': f'backup:{self.backup.id}',
        }
        self.bs.set_volume_metadata.assert_called_once_with(
            self.new.id, osc_backup_temporary='true', **mark)
        self.assertEqual(
            'osc-backup-tmp-0123456789ab-restore-of-web-vdb',
            self.bs.create_volume.call_args.kwargs['name'])
        self.assertEqual(('web-vdb', mark),
                         (result['final_name'], result['metadata']))
        # ... until it gives them
        self.bs.set_volume_metadata.reset_mock()
        self.bs.update_volume.side_effect = None
        volume_restore.finish_new_volume(
            self.bs, self.new.id, result['final_name'], result['metadata'])
        self.bs.delete_volume_metadata.assert_called_once_with(
            self.new.id, keys=['osc_backup_temporary'])
        self.bs.set_volume_metadata.assert_called_once_with(
            self.new.id, **mark)
        self.bs.update_volume.assert_called_once_with(
            self.new.id, name='web-vdb')

    def test_metadata_already_replaced_by_cinder(self):
        # Cinder's restore replaced the volume's metadata (with that of
        # the backed-up volume): the temporary mark is gone already
        self.bs.delete_volume_metadata.side_effect = (
            sdk_exc.NotFoundException('no such key')
        )
        result = self.restore()
        self.assertEqual('available', result['status'])
        self.bs.set_volume_metadata.assert_called_once()


class TestRestoreOntoExisting(RestoreTestCase):
    def setUp(self):
        super().setUp()
        self.target = fakes.volume(
            status='available', name='old', size=3, is_bootable=True
        )
        self.bs.find_volume.return_value = self.target
        self.bs.get_volume.side_effect = lambda vid: self.target

    def test_needs_force(self):
        exc = self.assertRaises(
            errors.InvalidInput, self.restore, volume='old'
        )
        self.assertIn('add --force', str(exc))
        self.bs.restore_backup.assert_not_called()

    def test_force_without_volume(self):
        exc = self.assertRaises(errors.InvalidInput, self.restore, force=True)
        self.assertIn('--force only applies to --volume', str(exc))

    def test_new_volume_options_rejected(self):
        for opt in ('name', 'volume_type', 'availability_zone',
                    'description'):
            exc = self.assertRaises(
                errors.InvalidInput, self.restore, volume='old', force=True,
                **{opt: 'x'},
            )
            self.assertIn('cannot be used with --volume', str(exc))

    def test_restore_onto_available_volume(self):
        result = self.restore(volume='old', force=True)
        self.bs.find_volume.assert_called_once_with(
            'old', ignore_missing=False
        )
        self.bs.create_volume.assert_not_called()
        self.bs.restore_backup.assert_called_once_with(
            self.backup, self.target.id
        )
        self.bs.set_volume_bootable_status.assert_not_called()
        self.assertIn('existing volume', result['restore_method'])
        self.assertEqual(self.target.id, result['volume_id'])

    def test_volume_not_available(self):
        self.target.status = 'in-use'
        exc = self.assertRaises(
            errors.InvalidInput, self.restore, volume='old', force=True
        )
        self.assertIn("is 'in-use'", str(exc))
        self.bs.restore_backup.assert_not_called()

    def test_volume_too_small(self):
        self.target.size = 1
        exc = self.assertRaises(
            errors.InvalidInput, self.restore, volume='old', force=True
        )
        self.assertIn('needs 2 GiB', str(exc))

    def test_failure_keeps_user_volume(self):
        def wait(res, status, **kwargs):
            raise sdk_exc.ResourceFailure('error_restoring')

        self.bs.wait_for_status.side_effect = wait
        self.bs.get_volume.side_effect = lambda vid: self.target
        self.assertRaises(
            errors.WaitError, self.restore, volume='old', force=True
        )
        self.bs.delete_volume.assert_not_called()

    def test_image_reimage(self):
        self.bs.post.return_value = mock.Mock(status_code=202)
        with mock.patch.object(volume_backup, 'supports', return_value=True):
            result = self.restore(
                self.source('image'), volume='old', force=True
            )
        self.bs.post.assert_called_once_with(
            f'/volumes/{self.target.id}/action',
            json={'os-reimage': {
                'image_id': self.image.id, 'reimage_reserved': False,
            }},
            microversion='3.68',
        )
        self.assertIn('re-image', result['restore_method'])

    def test_image_reimage_needs_368(self):
        with mock.patch.object(volume_backup, 'supports', return_value=False):
            exc = self.assertRaises(
                errors.InvalidInput, self.restore, self.source('image'),
                volume='old', force=True,
            )
        self.assertIn('3.68', str(exc))
        self.bs.post.assert_not_called()


class TestRestoreImage(RestoreTestCase):
    def test_new_volume_from_image(self):
        self.image.properties['osc_backup_bootable'] = 'false'
        self.new.is_bootable = True  # Cinder marks volumes from images
        result = self.restore(self.source('image'))
        attrs = self.bs.create_volume.call_args.kwargs
        self.assertEqual(self.image.id, attrs['image_id'])
        self.assertEqual(2, attrs['size'])
        self.assertEqual('luks', attrs['volume_type'])
        self.bs.restore_backup.assert_not_called()
        self.bs.set_volume_bootable_status.assert_called_once_with(
            self.new, False
        )
        self.assertEqual('image', result['source_kind'])
        self.assertIn('from the image', result['restore_method'])

    def test_no_wait_returns_at_once(self):
        self.image.properties['osc_backup_bootable'] = 'false'
        result = self.restore(self.source('image'), wait=False)
        self.bs.wait_for_status.assert_not_called()
        self.assertEqual('creating', result['status'])
        self.bs.set_volume_bootable_status.assert_not_called()
        # Cinder marks a volume from an image bootable: say how to undo
        self.assertIn(
            f'openstack volume set --non-bootable {self.new.id}',
            self.err.getvalue(),
        )
        self.assertTrue(result['name'].startswith('db-restore-'))

    def test_size_from_image_bytes_when_not_recorded(self):
        del self.image.properties['osc_backup_volume_size_gb']
        self.image.size = 3 * 1024**3 + 1
        self.restore(self.source('image'))
        self.assertEqual(4, self.bs.create_volume.call_args.kwargs['size'])

    def test_image_not_active(self):
        self.image.status = 'queued'
        exc = self.assertRaises(
            errors.InvalidInput, self.restore, self.source('image')
        )
        self.assertIn("is 'queued'", str(exc))

    def test_unknown_size(self):
        self.image.properties = {}
        self.image.size = 0
        exc = self.assertRaises(
            errors.InvalidInput, self.restore, self.source('image')
        )
        self.assertIn('Cannot tell the size', str(exc))

    def test_bad_timeout(self):
        self.assertRaises(errors.InvalidInput, self.restore, timeout=0)


class TestHelpers(base.TestCase):
    def test_int_and_bool(self):
        self.assertIsNone(volume_restore._int('x'))
        self.assertIsNone(volume_restore._int(''))
        self.assertEqual(3, volume_restore._int('3'))
        self.assertIsNone(volume_restore._bool(None))
        self.assertTrue(volume_restore._bool('True'))
        self.assertFalse(volume_restore._bool('false'))
