"""The minicloud itself: what the other functional tests rely on.

Tests that change which services run (up, stop/start, down) are in
osc_backup/tests/functional_teardown: they run after these, one at a time.
"""

import os
import tempfile

from osc_backup.tests.functional import base


class TestMinicloudLifecycle(base.FunctionalTestCase):

    def test_env_names_clouds_yaml(self):
        path = base.clouds_yaml()
        self.assertTrue(os.path.exists(path), path)
        with open(path) as f:
            text = f.read()
        self.assertIn('minicloud:', text)
        self.assertIn('minicloud-admin:', text)


class TestMinicloudVolumes(base.FunctionalTestCase):

    def test_attach_detach(self):
        vol = self.create_volume()
        self.minicloud('attach', vol['id'])
        info = self.openstack(['volume', 'show', vol['id']],
                              parse_output=True)
        self.assertEqual('in-use', info['status'])
        self.assertEqual(1, len(info['attachments']))
        # by name, as the member
        self.minicloud('detach', '--cloud', 'minicloud', vol['name'])
        info = self.openstack(['volume', 'show', vol['id']],
                              parse_output=True)
        self.assertEqual('available', info['status'])
        self.assertEqual([], info['attachments'])

    def test_volume_path_is_the_volume(self):
        vol = self.create_volume()
        path = self.volume_path(vol['name'])
        self.assertTrue(path.endswith('volume-' + vol['id']), path)
        self.assertEqual(vol['size'] * base.GiB, os.path.getsize(path))

    def test_bytes_survive_snapshot_volume_and_image(self):
        vol = self.create_volume()
        digest = self.write_random(vol['id'], mib=4, offset_mib=1)

        snap = self.create_snapshot(vol['id'])
        copy = self.create_volume(snapshot=snap['id'])
        self.assertEqual(digest, self.volume_sha256(copy['id']))

        # as the member, without --force (the cloud keeps
        # enable_force_upload off)
        image = self.create_image_from_volume(copy['id'])
        self.assertEqual(vol['size'] * base.GiB, image['size'])
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'image.raw')
            self.openstack(['image', 'save', '--file', out, image['id']])
            self.assertEqual(digest, self.sha256_file(out))
        # and the source is untouched
        self.assertEqual(digest, self.volume_sha256(vol['id']))

    def test_luks_volume_type_and_key_clone_on_upload(self):
        # a member can create an encrypted volume (Barbican key) and upload
        # it; Cinder clones the key for the image
        vol = self.create_volume(volume_type='luks')
        self.assertTrue(vol['encrypted'])
        digest = self.write_random(vol['id'], mib=1, offset_mib=0)
        image = self.create_image_from_volume(vol['id'])
        props = image['properties']
        shown = self.openstack(
            ['--os-volume-api-version', '3.64', 'volume', 'show', vol['id']],
            parse_output=True)
        self.assertTrue(shown['encryption_key_id'])
        self.assertTrue(props['cinder_encryption_key_id'])
        self.assertNotEqual(shown['encryption_key_id'],
                            props['cinder_encryption_key_id'])
        self.assertEqual('on_image_deletion',
                         props['cinder_encryption_key_deletion_policy'])
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'image.raw')
            self.openstack(['image', 'save', '--file', out, image['id']])
            self.assertEqual(digest, self.sha256_file(out))
