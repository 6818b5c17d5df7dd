"""Encrypted volumes in the volume, image-set and restore procedures."""

import io
import os
from unittest import mock

import fixtures
from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import records
from osc_backup.common import tags
from osc_backup.common.cleanup import Cleanup
from osc_backup.common import backup_set
from osc_backup.common.progress import Reporter
from osc_backup.procedures import image_restore
from osc_backup.procedures import image_save
from osc_backup.procedures import secrets
from osc_backup.procedures import volume_backup
from osc_backup.procedures import volume_image
from osc_backup.procedures import volume_restore
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.tests.unit import test_image_save
from osc_backup.tests.unit import test_secret
from osc_backup.tests.unit import test_volume_image

OLD_KEY = test_secret.UUID
NEW_KEY = 'ffffffff-0000-4000-8000-000000000001'


class TestViaImage(test_volume_image.ProcedureTestCase):
    def setUp(self):
        super().setUp()
        self.active.properties = {secrets.IMAGE_KEY_ID: OLD_KEY}
        self.vol = fakes.volume(is_encrypted=True, volume_type='luks')

    def backup(self, **opts):
        options = volume_image.Options(interval=0, **opts)
        return volume_image.backup_volume_via_image(
            self.conn, self.vol, options, run=self.run_ctx,
            reporter=self.reporter)

    def test_without_download_says_how_to_fetch_key(self):
        result = self.backup()
        self.assertEqual(OLD_KEY, result['encryption_key_id'])
        self.assertIn(
            f'openstack backup secret save {OLD_KEY} --luks-passphrase',
            self.err.getvalue())
        self.assertIn('useless without its key', self.err.getvalue())

    def test_download_saves_key_in_the_set(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        data = os.path.join(tmp, 'img.raw')
        saved = mock.Mock(files=[
            data, data + '.manifest.json', data + '.sha512', data + '.key',
            data + '.key.luks-passphrase', data + '.key.metadata.json'])
        with mock.patch.object(
            image_save, 'save_image', return_value=saved,
        ) as save, mock.patch(
                'osc_backup.common.backup_set.check_free_space'):
            result = self.backup(download=tmp)
        self.assertTrue(save.call_args.kwargs['with_key'])
        self.assertEqual(6, len(result['files']))
        self.assertIn(data + '.key.luks-passphrase', result['files'])
        self.assertIn('Saved key', self.err.getvalue())

    def test_key_read_failure_keeps_image(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        with mock.patch.object(
            image_save, 'save_image',
            side_effect=errors.BackupError('The key cannot be read: 403.'),
        ), mock.patch('osc_backup.common.backup_set.check_free_space'):
            exc = self.assertRaises(
                errors.BackupError, self.backup, download=tmp)
        self.assertIn('is active and complete', str(exc))
        self.assertIn('openstack backup image save', str(exc))
        self.image_proxy.delete_image.assert_not_called()

    def test_not_encrypted_unchanged(self):
        self.vol = fakes.volume()
        result = self.backup()
        self.assertIsNone(result['encryption_key_id'])
        self.assertNotIn('secret save', self.err.getvalue())


class TestBackupKey(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, _ = fakes.make_proxies()
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)
        self.backup = mock.Mock(id='b1', encryption_key_id=OLD_KEY,
                                metadata={'osc_backup_tool': 'osc-backup'})
        self.bs.get_backup.return_value = self.backup

    def test_recorded(self):
        with mock.patch.object(volume_backup, 'supports', return_value=True):
            key = volume_backup._record_key(
                self.bs, self.backup, 'vol', self.reporter, True)
        self.assertEqual(OLD_KEY, key)
        # the public SDK call, with the whole metadata (Cinder replaces it)
        self.bs.update_backup.assert_called_once_with(
            self.backup, metadata={
                'osc_backup_tool': 'osc-backup',
                'osc_backup_encryption_key_id': OLD_KEY})
        self.bs.put.assert_not_called()
        self.assertIn(OLD_KEY, self.err.getvalue())

    def test_record_failure_is_only_a_warning(self):
        self.bs.update_backup.side_effect = sdk_exc.HttpException('nope')
        with mock.patch.object(volume_backup, 'supports', return_value=True):
            key = volume_backup._record_key(
                self.bs, self.backup, 'vol', self.reporter, True)
        self.assertEqual(OLD_KEY, key)
        self.assertIn('could not record the key ID', self.err.getvalue())

    def test_old_cloud(self):
        self.backup.encryption_key_id = None
        with mock.patch.object(volume_backup, 'supports', return_value=False):
            key = volume_backup._record_key(
                self.bs, self.backup, 'vol', self.reporter, True)
        self.assertIsNone(key)
        self.assertIn('3.64', self.err.getvalue())
        self.bs.update_backup.assert_not_called()


class TestImageSetKey(test_image_save.DownloadTestCase):
    """A set of an encrypted volume's image holds its key; restore reads
    it from there (checked) or, failing that, copies the secret."""

    def setUp(self):
        super().setUp()
        self.fake = test_secret.FakeKM()
        self.conn.key_manager = self.fake.km
        self.rec = test_image_save.record(**{
            secrets.IMAGE_KEY_ID: OLD_KEY,
            secrets.IMAGE_KEY_POLICY: secrets.ON_IMAGE_DELETION})
        self.adapter.register_uri(
            'GET', f'{test_image_save.ENDPOINT}/images/'
            f'{test_image_save.IMAGE_ID}', json=self.rec)
        self.serve(self.whole())
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)

    def saved_set(self, **kwargs):
        saved = self.save(**kwargs)
        self.fake.km.get.reset_mock()
        return saved, backup_set.load_set(saved.manifest)

    def test_key_saved_in_the_set(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        saved, bs = self.saved_set()
        names = ['img.raw.key', 'img.raw.key.luks-passphrase',
                 'img.raw.key.metadata.json']
        self.assertEqual([os.path.join(self.dir, n) for n in names],
                         saved.key_files)
        for path in saved.files:
            self.assertEqual(0o600, os.stat(path).st_mode & 0o777)
        for name in names:
            self.assertIn(name, bs.checksums)
        self.assertEqual(
            sorted(['img.raw', 'img.raw.manifest.json', 'img.raw.sha512',
                    *names]), self.listing())

    def test_unreadable_key_fails_before_download_when_required(self):
        self.fake.km.get.side_effect = None
        self.fake.km.get.return_value = mock.Mock(status_code=403)
        with mock.patch.object(
            sdk_exc, 'raise_from_response',
            side_effect=sdk_exc.ForbiddenException('no'),
        ):
            exc = self.assertRaises(errors.BackupError, self.save,
                                    with_key=True)
            self.assertIn('nothing was downloaded', str(exc))
            self.assertEqual([], self.file_requests())
            # image save (not required): a warning, the set without it
            saved = self.save(reporter=self.reporter)
        self.assertEqual([], saved.key_files)
        self.assertIn('saved without it', self.err.getvalue())

    def test_not_encrypted(self):
        self.rec.pop(secrets.IMAGE_KEY_ID)
        self.adapter.register_uri(
            'GET', f'{test_image_save.ENDPOINT}/images/'
            f'{test_image_save.IMAGE_ID}', json=self.rec)
        _, bs = self.saved_set()
        self.assertIsNone(image_restore._key_to_restore(self.conn, bs, {}))

    def test_from_key_file(self):
        _, bs = self.saved_set()
        key = image_restore._key_to_restore(self.conn, bs, {})
        self.assertEqual(test_secret.KEY, key.payload)
        self.fake.km.get.assert_not_called()
        body = {secrets.IMAGE_KEY_ID: OLD_KEY}
        cleanup = Cleanup(self.reporter)
        name = tags.Run(run_id='0123456789ab').key_name('db image')
        new = image_restore._restore_key(
            self.conn, key, body, cleanup, self.reporter, name=name)
        self.assertEqual(NEW_KEY, new)
        # stored under the run's key name (what `backup cleanup` finds)
        self.assertEqual(
            'osc-backup-key-0123456789ab-of-db-image',
            self.fake.km.post.call_args.kwargs['json']['name'])
        self.assertEqual(NEW_KEY, body[secrets.IMAGE_KEY_ID])
        image_restore.key_policy(body, new, self.reporter)
        self.assertEqual(secrets.ON_IMAGE_DELETION,
                         body[secrets.IMAGE_KEY_POLICY])
        self.assertIn(f'{OLD_KEY} -> {NEW_KEY}', self.err.getvalue())
        # a failed restore deletes the new secret
        cleanup.run(failed=True)
        self.fake.km.delete_secret.assert_called_once_with(
            NEW_KEY, ignore_missing=True)

    def test_tampered_key_file_refused(self):
        saved, bs = self.saved_set()
        with open(saved.key_files[0], 'r+b') as f:
            f.write(b'X')
        exc = self.assertRaises(errors.InvalidInput,
                                image_restore._key_to_restore,
                                self.conn, bs, {})
        self.assertIn('does not match', str(exc))

    def test_key_file_symlink_leaving_the_set_refused(self):
        saved, bs = self.saved_set()
        outside = os.path.join(os.path.dirname(self.dir), 'stolen.key')
        os.rename(saved.key_files[0], outside)
        self.addCleanup(os.unlink, outside)
        os.symlink(outside, saved.key_files[0])
        exc = self.assertRaises(errors.InvalidInput,
                                image_restore._key_to_restore,
                                self.conn, bs, {})
        self.assertIn('leading out', str(exc))

    def test_copied_from_barbican_without_file(self):
        _, bs = self.saved_set(with_key=False)
        key = image_restore._key_to_restore(self.conn, bs, {})
        self.assertEqual(test_secret.KEY, key.payload)
        self.assertIn('Barbican secret', key.origin)

    def test_no_key_anywhere_fails_before_anything(self):
        _, bs = self.saved_set(with_key=False)
        self.fake.km.get.side_effect = None
        self.fake.km.get.return_value = mock.Mock(status_code=404)
        with mock.patch.object(
            sdk_exc, 'raise_from_response',
            side_effect=sdk_exc.NotFoundException('gone'),
        ):
            exc = self.assertRaises(
                errors.InvalidInput, image_restore._key_to_restore,
                self.conn, bs, {})
        self.assertIn('useless', str(exc))
        self.fake.km.post.assert_not_called()

    def test_property_override_skips(self):
        _, bs = self.saved_set()
        self.assertIsNone(image_restore._key_to_restore(
            self.conn, bs, {secrets.IMAGE_KEY_ID: 'other'}))


class TestRestoreKeyPolicy(test_image_save.RestoreTestCase):
    """A restored image never holds a key it did not create with
    cinder_encryption_key_deletion_policy=on_image_deletion."""

    RECORD = {secrets.IMAGE_KEY_ID: OLD_KEY,
              secrets.IMAGE_KEY_POLICY: secrets.ON_IMAGE_DELETION}
    LIVE_KEY = 'eeeeeeee-0000-4000-8000-00000000000e'

    def setUp(self):
        self.fake = test_secret.FakeKM()
        super().setUp()
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)

    def setup_conn(self):
        self.conn.key_manager = self.fake.km

    def restore(self, **properties):
        return image_restore.restore_image(
            self.conn, self.saved.manifest, properties=properties,
            reporter=self.reporter)

    def posted(self):
        return next(h for h in self.adapter.request_history
                    if h.method == 'POST').json()

    def test_given_key_never_deleted_with_the_image(self):
        # the report: the live volume's own key given explicitly
        self.restore(**{secrets.IMAGE_KEY_ID: self.LIVE_KEY})
        body = self.posted()
        self.assertEqual(self.LIVE_KEY, body[secrets.IMAGE_KEY_ID])
        self.assertEqual(secrets.DO_NOT_DELETE,
                         body[secrets.IMAGE_KEY_POLICY])
        self.fake.km.post.assert_not_called()
        self.assertIn(self.LIVE_KEY, self.err.getvalue())
        self.assertIn(secrets.DO_NOT_DELETE, self.err.getvalue())

    def test_given_policy_cannot_ask_to_delete_a_foreign_key(self):
        self.restore(**{secrets.IMAGE_KEY_ID: self.LIVE_KEY,
                        secrets.IMAGE_KEY_POLICY: secrets.ON_IMAGE_DELETION})
        self.assertEqual(secrets.DO_NOT_DELETE,
                         self.posted()[secrets.IMAGE_KEY_POLICY])

    def test_key_this_command_stored_deleted_with_the_image(self):
        r = self.restore()
        body = self.posted()
        self.assertEqual(NEW_KEY, body[secrets.IMAGE_KEY_ID])
        self.assertEqual(NEW_KEY, r.encryption_key_id)
        self.assertEqual(secrets.ON_IMAGE_DELETION,
                         body[secrets.IMAGE_KEY_POLICY])

    def fail_upload(self):
        self.adapter.register_uri(
            'PUT', f'{test_image_save.ENDPOINT}/images/{self.NEW_ID}/file',
            status_code=500, text='boom')

    def test_failure_deletes_only_the_key_it_stored(self):
        self.fail_upload()
        self.assertRaises(errors.BackupError, self.restore)
        self.conn.image.delete_image.assert_called_once_with(
            self.NEW_ID, ignore_missing=True)
        self.fake.km.delete_secret.assert_called_once_with(
            NEW_KEY, ignore_missing=True)

    def test_failure_never_deletes_a_given_key(self):
        self.fail_upload()
        self.assertRaises(errors.BackupError, self.restore,
                          **{secrets.IMAGE_KEY_ID: self.LIVE_KEY})
        self.conn.image.delete_image.assert_called_once()
        self.fake.km.delete_secret.assert_not_called()
        # and the image being deleted holds it with do_not_delete
        self.assertEqual(secrets.DO_NOT_DELETE,
                         self.posted()[secrets.IMAGE_KEY_POLICY])

    def test_key_policy_without_a_key_untouched(self):
        body = {'name': 'x'}
        image_restore.key_policy(body, None, self.reporter)
        self.assertEqual({'name': 'x'}, body)


class TestManifestKey(base.TestCase):
    def test_manifest_records_key(self):
        conn = mock.Mock()
        manifest = backup_set.build_manifest(
            conn, {'id': 'i', secrets.IMAGE_KEY_ID: OLD_KEY},
            data_file='img.raw', size=1, hash_algo='sha512',
            hash_value='0' * 128, verified=True, started=0.0, finished=1.0)
        self.assertEqual(
            OLD_KEY, manifest['encryption']['cinder_encryption_key_id'])
        self.assertEqual('img.raw.key', manifest['encryption']['key_file'])
        plain = backup_set.build_manifest(
            conn, {'id': 'i'}, data_file='img.raw', size=1,
            hash_algo='sha512', hash_value='0' * 128, verified=True, started=0.0, finished=1.0)
        self.assertNotIn('encryption', plain)


class TestVolumeRestoreEncrypted(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, self.image_proxy = fakes.make_proxies()
        self.conn = mock.Mock(block_storage=self.bs, image=self.image_proxy)
        self.image = fakes.image(
            status='active', size=1024**3, min_disk=0, name='img',
            properties={
                records.VOLUME_TYPE: 'luks',
                records.VOLUME_SIZE_GB: '1',
                secrets.IMAGE_KEY_ID: OLD_KEY,
            })
        self.bs.find_type.return_value = mock.Mock(id='t')
        self.run_ctx = tags.Run(run_id='0123456789ab')

    def prepare(self, **opts):
        return volume_restore.prepare(
            self.conn, volume_restore.Source('image', self.image),
            volume_restore.Options(**opts), self.run_ctx)

    def test_encrypted_type_ok(self):
        self.bs.get_type_encryption.return_value = mock.Mock(
            provider='luks', encryption_id='e')
        plan = self.prepare()
        self.assertEqual('luks', plan.volume_type)

    def test_plain_type_refused(self):
        self.bs.get_type_encryption.return_value = mock.Mock(
            provider=None, encryption_id=None)
        exc = self.assertRaises(
            errors.InvalidInput, self.prepare, volume_type='file')
        self.assertIn('not encrypted', str(exc))
        self.bs.create_volume.assert_not_called()

    def test_member_cannot_read_encryption(self):
        self.bs.get_type_encryption.side_effect = (
            sdk_exc.ForbiddenException('no'))
        self.assertEqual('luks', self.prepare().volume_type)

    def test_note_new_key(self):
        err = io.StringIO()
        vol = mock.Mock(id='v', is_encrypted=True, encryption_key_id=NEW_KEY)
        key = volume_restore._note_key(
            self.bs, vol, volume_restore.Source('image', self.image),
            Reporter(stream=err, progress=False))
        self.assertEqual(NEW_KEY, key)
        self.assertIn(OLD_KEY, err.getvalue())
        self.assertIn(NEW_KEY, err.getvalue())
