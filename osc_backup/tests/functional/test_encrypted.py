"""Encrypted (LUKS) volumes and their Barbican keys on the local real cloud.

An encrypted volume of the minicloud's ``luks`` type is LUKS-formatted on
its backend file with ``binascii.hexlify(key)``, as os-brick does on the
first attach (nothing attaches here), and filled with random bytes behind
the LUKS header. It is then backed up with ``--via-image --download``:
the downloaded image must open with the saved passphrase and the saved key
must be the image's own (cloned, different ID) key. The set is restored
(``backup image restore``: the key is stored again under a new ID, and
the image points at it) and made into a volume again
(``backup volume restore``), whose bytes must equal the original's. A
restore given the volume's own key (``--property
cinder_encryption_key_id=``) must leave that key alone when the restored
image is deleted.
"""

import binascii
import json
import os
import shutil
import stat
import subprocess
import tempfile


from osc_backup.tests.functional import base

LUKS_TYPE = 'luks'
CRYPTSETUP = shutil.which('cryptsetup') or '/usr/sbin/cryptsetup'


class EncryptedVolumeTestCase(base.FunctionalTestCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(CRYPTSETUP):
            self.skipTest('cryptsetup is missing (apt-get install -y '
                          'cryptsetup-bin)')
        self.conn = self.connect()
        self.tmp = tempfile.mkdtemp(prefix='osc-backup-ft-enc-')
        self.addCleanup(shutil.rmtree, self.tmp, True)

    # ---- helpers ------------------------------------------------------
    def backup_cmd(self, *args):
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                *args, '-f', 'json']
        p = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True,
                           timeout=base.COMMAND_TIMEOUT)
        if p.returncode != 0:
            raise base.CommandFailed(p.returncode, argv, p.stdout, p.stderr)
        return json.loads(p.stdout), p.stderr

    def delete_image(self, image_id):
        # Glance deletes the image's cloned key with it
        # (cinder_encryption_key_deletion_policy=on_image_deletion)
        self.conn.image.delete_image(image_id, ignore_missing=True)

    def payload(self, key_id):
        """The key's bytes, read with the SDK (not osc-backup's code)."""
        secret = self.conn.key_manager.get_secret(key_id)
        self.assertEqual('application/octet-stream',
                         secret.content_types['default'])
        return bytes(secret.payload)

    def luks_format(self, path, passphrase):
        """What os-brick's LUKS encryptor does on the first attach."""
        subprocess.run(
            [CRYPTSETUP, '--batch-mode', 'luksFormat', '--type', 'luks1',
             '--cipher', 'aes-xts-plain64', '--key-size', '256',
             '--iter-time', '100', '--key-file', '-', path],
            input=passphrase, check=True, capture_output=True, timeout=120)

    def opens(self, path, key_file):
        p = subprocess.run(
            [CRYPTSETUP, 'open', '--test-passphrase', '--key-file',
             key_file, path], capture_output=True, timeout=120)
        return p.returncode == 0

    # ---- the test -----------------------------------------------------
    def test_backup_download_restore_encrypted_volume(self):
        vol = self.create_volume(1, volume_type=LUKS_TYPE)
        sdk_vol = self.conn.block_storage.get_volume(vol['id'])
        self.assertTrue(sdk_vol.is_encrypted)
        vol_key_id = sdk_vol.encryption_key_id
        self.assertTrue(vol_key_id, 'no encryption_key_id (needs 3.64)')
        key = self.payload(vol_key_id)
        passphrase = binascii.hexlify(key)

        path = self.volume_path(vol['id'])
        self.luks_format(path, passphrase)
        # data behind the LUKS1 header (2 MiB for a 256-bit key)
        original = self.write_random(vol['id'], mib=4, offset_mib=4)
        wrong = os.path.join(self.tmp, 'wrong')
        with open(wrong, 'wb') as f:
            f.write(binascii.hexlify(bytes(32)))

        # -- back up with the key
        out_dir = os.path.join(self.tmp, 'set')
        os.mkdir(out_dir)
        result, stderr = self.backup_cmd(
            'volume', 'create', '--via-image', '--download', out_dir,
            vol['id'])
        self.addCleanup(self.delete_image, result['image_id'])
        self.assertTrue(result['encrypted'])
        image = self.conn.image.get_image(result['image_id'])
        image_key_id = image.properties['cinder_encryption_key_id']
        self.assertEqual(image_key_id, result['encryption_key_id'])
        self.assertNotEqual(vol_key_id, image_key_id)  # Cinder cloned it
        files = result['files']
        data = next(f for f in files if f.endswith('.raw'))
        key_file = data + '.key'
        pass_file = data + '.key.luks-passphrase'
        meta_file = data + '.key.metadata.json'
        for f in (key_file, pass_file, meta_file):
            self.assertIn(f, files)
            self.assertEqual(0o600, stat.S_IMODE(os.stat(f).st_mode), f)
        self.assertIn('Saved key', stderr)
        self.assertEqual(original, base.sha256_file(data, length=base.GiB))
        with open(key_file, 'rb') as f:
            self.assertEqual(key, f.read())  # same bytes, new ID
        self.assertEqual(key, self.payload(image_key_id))
        with open(meta_file) as f:
            meta = json.load(f)
        self.assertEqual(image_key_id, meta['secret']['id'])
        self.assertEqual('symmetric', meta['secret']['secret_type'])
        with open(data + '.manifest.json') as f:
            manifest = json.load(f)
        self.assertEqual(image_key_id,
                         manifest['encryption']['cinder_encryption_key_id'])
        # the saved passphrase opens the downloaded LUKS data; a wrong
        # one does not
        self.assertTrue(self.opens(data, pass_file))
        self.assertFalse(self.opens(data, wrong))

        # -- restore the set: the key gets a new ID
        restored, stderr = self.backup_cmd('image', 'restore', data)
        self.addCleanup(self.delete_image, restored['image_id'])
        new_image = self.conn.image.get_image(restored['image_id'])
        new_key_id = new_image.properties['cinder_encryption_key_id']
        self.assertNotIn(new_key_id, (image_key_id, vol_key_id))
        self.assertEqual(
            'on_image_deletion',
            new_image.properties['cinder_encryption_key_deletion_policy'])
        self.assertIn(f'{image_key_id} -> {new_key_id}', stderr)
        self.assertEqual(new_key_id, restored['encryption_key_id'])
        self.assertEqual(image_key_id,
                         restored['previous_encryption_key_id'])
        self.assertEqual(key, self.payload(new_key_id))

        # -- the report: a set restored with the live volume's own
        # key must not let the image (or its deletion) delete that key
        given, stderr = self.backup_cmd(
            'image', 'restore', data, '--property',
            f'cinder_encryption_key_id={vol_key_id}')
        self.addCleanup(self.delete_image, given['image_id'])
        props = self.conn.image.get_image(given['image_id']).properties
        self.assertEqual(vol_key_id, props['cinder_encryption_key_id'])
        self.assertEqual('do_not_delete',
                         props['cinder_encryption_key_deletion_policy'])
        self.assertIsNone(given['encryption_key_id'])  # nothing stored
        self.assertIn('do_not_delete', stderr)
        self.conn.image.delete_image(given['image_id'])
        self.assertIsNone(self.conn.image.find_image(given['image_id']))
        # the live volume's key survives the deletion of the image
        self.assertEqual(key, self.payload(vol_key_id))

        # 'backup image save' saves the key in the set too (it can read
        # it); without the key files, in the same cloud the recorded
        # secret is copied (a new ID again)
        plain_dir = os.path.join(self.tmp, 'plain')
        saved, _ = self.backup_cmd('image', 'save', '--dir', plain_dir,
                                   result['image_id'])
        with open(saved['file'] + '.key', 'rb') as f:
            self.assertEqual(key, f.read())
        for suffix in ('.key', '.key.luks-passphrase', '.key.metadata.json'):
            os.unlink(saved['file'] + suffix)
        copied, stderr = self.backup_cmd('image', 'restore', saved['file'])
        self.addCleanup(self.delete_image, copied['image_id'])
        self.assertIn(f'Barbican secret {image_key_id}', stderr)
        self.assertNotIn(copied['encryption_key_id'],
                         (image_key_id, new_key_id))
        self.assertEqual(key, self.payload(copied['encryption_key_id']))

        # -- and a volume from it: recorded (encrypted) type, same bytes
        new_vol, stderr = self.backup_cmd(
            'volume', 'restore', restored['image_id'])
        self.addCleanup(self._delete_volume, new_vol['volume_id'],
                        base.MEMBER_CLOUD)
        self.assertEqual('available', new_vol['status'])
        self.assertEqual(LUKS_TYPE, new_vol['volume_type'])
        restored_vol = self.conn.block_storage.get_volume(
            new_vol['volume_id'])
        self.assertTrue(restored_vol.is_encrypted)
        self.assertEqual(restored_vol.encryption_key_id,
                         new_vol['encryption_key_id'])
        self.assertNotIn(restored_vol.encryption_key_id,
                         (new_key_id, image_key_id, vol_key_id))
        self.assertEqual(key, self.payload(restored_vol.encryption_key_id))
        self.assertEqual(original, self.volume_sha256(new_vol['volume_id']))
        self.assertTrue(self.opens(self.volume_path(new_vol['volume_id']),
                                   pass_file))

    def test_secret_save_cli(self):
        vol = self.create_volume(1, volume_type=LUKS_TYPE)
        key_id = self.conn.block_storage.get_volume(
            vol['id']).encryption_key_id
        key = self.payload(key_id)
        target = os.path.join(self.tmp, 'k')
        out = self.openstack(
            ['--debug', 'backup', 'secret', 'save', key_id, '--file',
             target, '--luks-passphrase'], parse_output=False)
        del out
        with open(target, 'rb') as f:
            self.assertEqual(binascii.hexlify(key), f.read())
        self.assertEqual(0o600, stat.S_IMODE(os.stat(target).st_mode))
        # --debug logs requests and bodies: never the payload
        p = subprocess.run(
            [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, '--debug',
             'backup', 'secret', 'save', key_id],
            env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=120)
        self.assertEqual(0, p.returncode, p.stderr)
        self.assertEqual(key, p.stdout)  # raw bytes to a pipe
        self.assertNotIn(key.hex().encode(), p.stderr)
        self.assertNotIn(key, p.stderr)
        # never an overwrite
        p = subprocess.run(
            [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
             'secret', 'save', key_id, '--file', target],
            env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=120)
        self.assertNotEqual(0, p.returncode)
        self.assertIn('exists', p.stderr)

    def test_cinder_backup_records_key(self):
        vol = self.create_volume(1, volume_type=LUKS_TYPE)
        vol_key_id = self.conn.block_storage.get_volume(
            vol['id']).encryption_key_id
        key = self.payload(vol_key_id)
        self.luks_format(self.volume_path(vol['id']), binascii.hexlify(key))
        original = self.write_random(vol['id'], mib=2, offset_mib=4)
        result, stderr = self.backup_cmd(
            'volume', 'create', '--via-backup', vol['id'])
        self.addCleanup(self._delete_simple, 'volume backup',
                        result['backup_id'], base.MEMBER_CLOUD)
        self.assertTrue(result['encrypted'])
        backup = self.conn.block_storage.get_backup(result['backup_id'])
        self.assertTrue(backup.encryption_key_id)
        self.assertEqual(backup.encryption_key_id,
                         result['encryption_key_id'])
        self.assertNotEqual(vol_key_id, backup.encryption_key_id)
        self.assertEqual(backup.encryption_key_id,
                         backup.metadata['osc_backup_encryption_key_id'])
        self.assertIn(backup.encryption_key_id, stderr)
        # restore: an empty volume of the recorded (encrypted, not
        # default) type, the backup restored onto it
        new_vol, stderr = self.backup_cmd(
            'volume', 'restore', result['backup_id'])
        self.addCleanup(self._delete_volume, new_vol['volume_id'],
                        base.MEMBER_CLOUD)
        self.assertEqual(LUKS_TYPE, new_vol['volume_type'])
        self.assertEqual(original, self.volume_sha256(new_vol['volume_id']))
        restored_key = self.conn.block_storage.get_volume(
            new_vol['volume_id']).encryption_key_id
        self.assertEqual(restored_key, new_vol['encryption_key_id'])
        self.assertEqual(key, self.payload(restored_key))

    def test_in_use_encrypted_volume_via_image(self):
        """Snapshot -> temporary volume -> image: the image's own key is
        saved and opens the data; the temporaries are gone."""
        vol = self.create_volume(1, volume_type=LUKS_TYPE)
        vol_key_id = self.conn.block_storage.get_volume(
            vol['id']).encryption_key_id
        key = self.payload(vol_key_id)
        self.luks_format(self.volume_path(vol['id']), binascii.hexlify(key))
        original = self.write_random(vol['id'], mib=2, offset_mib=4)
        self.minicloud('attach', vol['id'])
        out_dir = os.path.join(self.tmp, 'set')
        os.mkdir(out_dir)
        result, stderr = self.backup_cmd(
            'volume', 'create', '--via-image', '--download', out_dir,
            vol['id'])
        self.addCleanup(self.delete_image, result['image_id'])
        self.assertEqual('crash-consistent', result['consistency'])
        self.assertIn('Saved key', stderr)
        data = result['files'][0]
        self.assertEqual(original, base.sha256_file(data))
        self.assertNotEqual(vol_key_id, result['encryption_key_id'])
        with open(data + '.key', 'rb') as f:
            self.assertEqual(key, f.read())
        self.assertTrue(self.opens(data, data + '.key.luks-passphrase'))
        # the temporary snapshot and volume (and with it the key Cinder
        # cloned for it) are gone
        left = [v.id for v in self.conn.block_storage.volumes()
                if (v.metadata or {}).get('osc_backup_source_volume_id')
                == vol['id']]
        left += [s.id for s in self.conn.block_storage.snapshots()
                 if (s.metadata or {}).get('osc_backup_source_volume_id')
                 == vol['id']]
        self.assertEqual([], left)
