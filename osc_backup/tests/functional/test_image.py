"""`openstack backup image save|restore` against the real minicloud."""

import hashlib
import json
import os
import signal
import subprocess
import time

import fixtures

from osc_backup.tests.functional import base

MiB = base.MiB


def prop(image, key):
    """`image show -f json` puts os_hash_* under properties."""
    if key in image:
        return image[key]
    return image['properties'][key]


def sdk_connection(cloud=base.MEMBER_CLOUD):
    from openstack import connection
    from openstack.config import loader

    config = loader.OpenStackConfig(config_files=[base.clouds_yaml()])
    return connection.Connection(config=config.get_one(cloud))


class ImageTestCase(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir(rootdir='/var/tmp')).path

    def make_image(self, mib, *, name=None):
        """Upload `mib` MiB of random bytes; return (image, sha256)."""
        path = os.path.join(self.dir, 'source.bin')
        h = hashlib.sha256()
        with open(path, 'wb') as f:
            for _ in range(mib):
                chunk = os.urandom(MiB)
                h.update(chunk)
                f.write(chunk)
        image = self.openstack(
            ['image', 'create', '--disk-format', 'raw',
             '--container-format', 'bare', '--file', path,
             '--property', 'osc_backup_source_volume_id=ft-volume',
             '--property', 'hw_disk_bus=scsi', '--min-disk', '1',
             name or self.unique_name()], parse_output=True)
        os.unlink(path)
        self.addCleanup(self._delete_simple, 'image', image['id'],
                        base.MEMBER_CLOUD)
        image = self.wait_for_status('image', image['id'], 'active',
                                     failures=('killed', 'deleted'))
        return image, h.hexdigest()

    def save(self, image, *args, fail_ok=False):
        argv = ['backup', 'image', 'save', image, *args]
        if fail_ok:
            return self.run_cli(argv)
        return self.openstack(argv, parse_output=True)

    def store_path(self, image_id):
        """The image's file in Glance's filesystem store (minicloud)."""
        state = os.path.dirname(base.clouds_yaml())
        path = os.path.join(state, 'data', 'glance', 'images', image_id)
        if not os.path.exists(path):
            self.skipTest(f'Glance store file not found at {path}')
        return path


class TestSaveRestore(ImageTestCase):

    def test_save_restore_save_all_hashes_equal(self):
        image, sha256 = self.make_image(24)
        saved = self.save(image['id'], '--dir', self.dir)
        self.assertEqual(sha256, self.sha256_file(saved['file']))
        self.assertTrue(saved['verified'])
        self.assertEqual(prop(image, 'os_hash_value'), saved['hash_value'])
        self.assertEqual(prop(image, 'os_hash_algo'), saved['hash_algo'])
        self.assertEqual(24 * MiB, saved['size'])
        self.assertEqual(0, saved['resumed_from'])
        # one checksum file, Glance's algorithm, works without our tool
        self.assertEqual(saved['file'] + '.sha512', saved['checksum_file'])
        p = subprocess.run(['sha512sum', '-c',
                            os.path.basename(saved['checksum_file'])],
                           cwd=self.dir, capture_output=True, text=True)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)
        with open(saved['manifest']) as f:
            manifest = json.load(f)
        self.assertEqual(image['id'], manifest['image']['id'])
        self.assertEqual(image['name'], manifest['image']['name'])
        self.assertEqual({'osc_backup_source_volume_id': 'ft-volume'},
                         manifest['backup'])
        self.assertEqual('scsi', manifest['glance_record']['hw_disk_bus'])
        self.assertEqual('minicloud', manifest['source']['cloud'])
        self.assertEqual('RegionOne', manifest['source']['region'])
        self.assertTrue(manifest['source']['project_id'])
        # user data: 0600 files
        for key in ('file', 'manifest', 'checksum_file'):
            self.assertEqual(0o600, os.stat(saved[key]).st_mode & 0o777)
        # no temporary files left
        self.assertEqual(
            sorted(os.path.basename(saved[k])
                   for k in ('file', 'manifest', 'checksum_file')),
            sorted(f for f in os.listdir(self.dir)))

        name = self.unique_name()
        restored = self.openstack(
            ['backup', 'image', 'restore', saved['manifest'], '--name',
             name, '--property', 'restored_by=ft'], parse_output=True)
        self.addCleanup(self._delete_simple, 'image', restored['image_id'],
                        base.MEMBER_CLOUD)
        self.assertEqual('active', restored['status'])
        self.assertEqual(name, restored['name'])
        self.assertEqual(prop(image, 'os_hash_value'), restored['os_hash_value'])
        self.assertEqual(image['checksum'], restored['checksum'])
        self.assertEqual(image['id'], restored['source_image_id'])
        shown = self.openstack(['image', 'show', restored['image_id']],
                               parse_output=True)
        self.assertEqual('raw', shown['disk_format'])
        self.assertEqual('bare', shown['container_format'])
        self.assertEqual(1, shown['min_disk'])
        props = shown['properties']
        self.assertEqual('scsi', props['hw_disk_bus'])
        self.assertEqual('ft-volume', props['osc_backup_source_volume_id'])
        self.assertEqual('ft', props['restored_by'])

        again = os.path.join(self.dir, 'again')
        saved2 = self.save(restored['image_id'], '--dir', again)
        self.assertEqual(saved['hash_value'], saved2['hash_value'])
        self.assertEqual(sha256, self.sha256_file(saved2['file']))

    def test_refuses_to_overwrite_and_inactive_images(self):
        image, _ = self.make_image(1)
        target = os.path.join(self.dir, 'x.raw')
        with open(target, 'w') as f:
            f.write('keep me')
        p = self.save(image['id'], '--file', target, fail_ok=True)
        self.assertNotEqual(0, p.returncode)
        self.assertIn('--overwrite', p.stderr)
        with open(target) as f:
            self.assertEqual('keep me', f.read())
        saved = self.save(image['id'], '--file', target, '--overwrite')
        self.assertEqual(prop(image, 'os_hash_value'), saved['hash_value'])
        self.assertEqual(1 * MiB, os.path.getsize(target))

        # an image without data (the CLI would upload its empty stdin)
        conn = sdk_connection()
        self.addCleanup(conn.close)
        resp = conn.image.post('/images', json={
            'name': self.unique_name(), 'disk_format': 'raw',
            'container_format': 'bare'})
        self.assertEqual(201, resp.status_code, resp.text)
        queued = resp.json()
        self.addCleanup(self._delete_simple, 'image', queued['id'],
                        base.MEMBER_CLOUD)
        p = self.save(queued['id'], '--dir', self.dir, fail_ok=True)
        self.assertNotEqual(0, p.returncode)
        self.assertIn("is 'queued'", p.stderr)


class TestResume(ImageTestCase):

    def test_killed_download_resumes_and_verifies(self):
        image, sha256 = self.make_image(512)
        target = os.path.join(self.dir, 'big.raw')
        part = os.path.join(self.dir, '.big.raw.partial', 'big.raw.part')
        proc = subprocess.Popen(
            [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
             'image', 'save', image['id'], '--file', target],
            env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        deadline = time.time() + 120
        killed_at = None
        while time.time() < deadline and proc.poll() is None:
            try:
                if os.path.getsize(part) >= 64 * MiB:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed_at = os.path.getsize(part)
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        if killed_at is None:
            self.skipTest('the download finished before it could be killed')
        self.assertFalse(os.path.exists(target))
        self.assertLess(killed_at, 512 * MiB)

        saved = self.save(image['id'], '--file', target)
        self.assertGreater(saved['resumed_from'], 0)
        self.assertLessEqual(saved['resumed_from'], killed_at)
        self.assertEqual(prop(image, 'os_hash_value'), saved['hash_value'])
        self.assertEqual(sha256, self.sha256_file(target))
        self.assertFalse(os.path.exists(os.path.dirname(part)))

    def test_sigterm_keeps_partial_with_message(self):
        image, sha256 = self.make_image(512)
        target = os.path.join(self.dir, 'big.raw')
        part = os.path.join(self.dir, '.big.raw.partial', 'big.raw.part')
        proc = subprocess.Popen(
            [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
             'image', 'save', image['id'], '--file', target],
            env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        deadline = time.time() + 120
        sent = False
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(part) and os.path.getsize(part) >= 32 * MiB:
                proc.send_signal(signal.SIGTERM)
                sent = True
                break
            time.sleep(0.005)
        _out, err = proc.communicate(timeout=60)
        if not sent or proc.returncode == 0:
            self.skipTest('the download finished before SIGTERM arrived')
        self.assertIn('run the same command again to resume', err)
        self.assertFalse(os.path.exists(target))
        self.assertTrue(os.path.exists(part))
        saved = self.save(image['id'], '--file', target)
        self.assertGreater(saved['resumed_from'], 0)
        self.assertEqual(sha256, self.sha256_file(target))


class TestCorruption(ImageTestCase):

    def test_server_side_corruption_detected(self):
        image, _ = self.make_image(8)
        # as the cloud's admin would see it: the stored bytes change
        # under Glance, so they no longer match os_hash_value
        path = self.store_path(image['id'])
        with open(path, 'r+b') as f:
            f.seek(3 * MiB + 17)
            byte = f.read(1)
            f.seek(3 * MiB + 17)
            f.write(bytes([byte[0] ^ 0xFF]))
        target = os.path.join(self.dir, 'bad.raw')
        p = self.save(image['id'], '--file', target, fail_ok=True)
        self.assertNotEqual(0, p.returncode)
        self.assertIn('did not verify', p.stderr)
        self.assertIn(prop(image, 'os_hash_value'), p.stderr)
        self.assertEqual([], os.listdir(self.dir))

        p = self.save(image['id'], '--file', target, '--keep-partial',
                      fail_ok=True)
        self.assertNotEqual(0, p.returncode)
        self.assertEqual(['bad.raw.unverified'], os.listdir(self.dir))
        self.assertEqual(8 * MiB, os.path.getsize(target + '.unverified'))


class TestTrust(ImageTestCase):
    """The issue's reported cases, on the real cloud."""

    def images_named(self, name):
        return [i for i in self.openstack(['image', 'list', '--name', name],
                                          parse_output=True)]

    def test_manifest_pointing_outside_the_set_refused(self):
        image, _ = self.make_image(1)
        sets = os.path.join(self.dir, 'set')
        saved = self.save(image['id'], '--dir', sets)
        # a file outside the set, which the forged manifest points at
        outside = os.path.join(self.dir, 'outside.raw')
        with open(outside, 'wb') as f:
            f.write(b'not yours' * 1000)
        with open(saved['manifest']) as f:
            manifest = json.load(f)
        manifest['data']['file'] = '../outside.raw'
        with open(saved['manifest'], 'w') as f:
            json.dump(manifest, f)
        name = self.unique_name()
        p = self.run_cli(['backup', 'image', 'restore', saved['manifest'],
                          '--name', name])
        self.assertNotEqual(0, p.returncode, p.stdout)
        self.assertIn('data.file', p.stderr)
        self.assertNotIn('Traceback', p.stderr)
        self.assertEqual(1, len(p.stderr.strip().splitlines()), p.stderr)
        self.assertEqual([], self.images_named(name))

    def test_symlink_at_partial_name_not_written_through(self):
        image, _ = self.make_image(2)
        victim_dir = os.path.join(self.dir, 'victim')
        os.mkdir(victim_dir)
        victim = os.path.join(self.dir, 'victim.bin')
        with open(victim, 'wb') as f:
            f.write(b'precious')
        target = os.path.join(self.dir, 'x.raw')
        # the partial directory, and the partial name of earlier versions
        os.symlink(victim_dir, os.path.join(self.dir, '.x.raw.partial'))
        os.symlink(victim, os.path.join(self.dir, '.x.raw.part'))
        p = self.save(image['id'], '--file', target, fail_ok=True)
        self.assertNotEqual(0, p.returncode)
        self.assertIn('symbolic link', p.stderr)
        self.assertEqual([], os.listdir(victim_dir))
        with open(victim, 'rb') as f:
            self.assertEqual(b'precious', f.read())
        self.assertFalse(os.path.exists(target))
        # once removed, the same command works and the files are private
        os.unlink(os.path.join(self.dir, '.x.raw.partial'))
        saved = self.save(image['id'], '--file', target)
        self.assertEqual(0o600, os.stat(target).st_mode & 0o777)
        self.assertEqual(2 * MiB, saved['size'])
        with open(victim, 'rb') as f:
            self.assertEqual(b'precious', f.read())
