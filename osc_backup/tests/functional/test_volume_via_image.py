"""`openstack backup volume create --via-image` on the local real cloud.

Every test writes known random bytes into a volume's backend file, backs
the volume up with the real `openstack` binary, downloads the image and
compares sha256; and checks that no temporary snapshot or volume is left.
"""

import json
import os
import signal
import subprocess
import tempfile
import time


from osc_backup.tests.functional import base


class VolumeViaImageTestCase(base.FunctionalTestCase):
    def setUp(self):
        super().setUp()
        self.conn = self.connect()
        self.tmp = tempfile.mkdtemp(prefix='osc-backup-ft-')
        self.addCleanup(subprocess.run, ['rm', '-rf', self.tmp])

    # ---- helpers ------------------------------------------------------
    def backup(self, *args, timeout=base.COMMAND_TIMEOUT):
        """Run `openstack backup volume create ...`; return the process."""
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                'volume', 'create', *args]
        return subprocess.run(
            argv, env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout)

    def backup_json(self, *args):
        p = self.backup(*args, '-f', 'json')
        if p.returncode != 0:
            raise base.CommandFailed(p.returncode, args, p.stdout, p.stderr)
        result = json.loads(p.stdout)
        self.addCleanup(self.delete_image, result['image_id'])
        return result, p.stderr

    def delete_image(self, image_id):
        self.conn.image.delete_image(image_id, ignore_missing=True)

    def download_sha256(self, image_id):
        path = os.path.join(self.tmp, image_id)
        self.openstack(['image', 'save', '--chunk-size', '1048576',
                        '--file', path, image_id])
        sha = base.sha256_file(path)
        os.unlink(path)
        return sha

    def temporaries(self, source_volume_id):
        """Temporary volumes/snapshots osc-backup made of this volume."""
        found = []
        for res in list(self.conn.block_storage.volumes()) + list(
                self.conn.block_storage.snapshots()):
            md = res.metadata or {}
            if md.get('osc_backup_source_volume_id') == source_volume_id:
                found.append((type(res).__name__, res.id, res.status))
        return found

    def images_named(self, name):
        return list(self.conn.image.images(name=name))

    def wait_for(self, predicate, timeout=120, what='condition'):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.5)
        self.fail('timed out waiting for %s' % what)


class TestVolumeViaImage(VolumeViaImageTestCase):
    def test_available_volume(self):
        vol = self.create_volume(1)
        expected = self.write_random(vol['id'], mib=64)
        name = self.unique_name('ft-avail')
        result, stderr = self.backup_json(
            '--via-image', '--name', name, '--property', 'team=qa',
            vol['name'])
        self.assertEqual('active', result['status'])
        self.assertEqual('offline', result['consistency'])
        self.assertEqual('image', result['method'])
        self.assertEqual(vol['id'], result['source_volume_id'])
        self.assertEqual(name, result['name'])
        self.assertEqual(1024 ** 3, result['size'])
        self.assertNotIn('crash-consistent', stderr)
        self.assertEqual(expected, self.download_sha256(result['image_id']))
        image = self.conn.image.get_image(result['image_id'])
        props = image.properties
        self.assertEqual(vol['id'], props['osc_backup_source_volume_id'])
        self.assertEqual(vol['name'], props['osc_backup_source_volume_name'])
        self.assertEqual('1', props['osc_backup_volume_size_gb'])
        self.assertEqual('offline', props['osc_backup_consistency'])
        self.assertEqual(result['run_id'], props['osc_backup_run_id'])
        self.assertEqual('qa', props['team'])
        self.assertEqual(
            'available',
            self.conn.block_storage.get_volume(vol['id']).status)
        self.assertEqual([], self.temporaries(vol['id']))

    def test_in_use_volume(self):
        vol = self.create_volume(1)
        expected = self.write_random(vol['id'], mib=64, offset_mib=100)
        self.minicloud('attach', vol['id'])
        self.assertEqual(
            'in-use', self.conn.block_storage.get_volume(vol['id']).status)
        result, stderr = self.backup_json(
            '--via-image', '--download', self.tmp, vol['id'])
        self.assertEqual('crash-consistent', result['consistency'])
        self.assertIn('WARNING', stderr)
        self.assertIn('crash-consistent', stderr)
        # --download wrote a verified backup set: data, manifest, checksums
        data, manifest, sums = result['files']
        self.assertEqual(self.tmp, os.path.dirname(data))
        self.assertEqual(expected, base.sha256_file(data))
        with open(manifest) as f:
            record = json.load(f)
        self.assertIn(result['image_id'], json.dumps(record))
        algo = sums.rsplit('.', 1)[1]  # <data>.<algo>: Glance's hash
        check = subprocess.run([f'{algo}sum', '-c', os.path.basename(sums)],
                               cwd=self.tmp, capture_output=True, text=True)
        self.assertEqual(0, check.returncode, check.stdout + check.stderr)
        # the attached volume is untouched, and nothing temporary is left
        self.assertEqual(
            'in-use', self.conn.block_storage.get_volume(vol['id']).status)
        self.assertEqual([], self.temporaries(vol['id']))
        listed = self.openstack(
            ['backup', 'cleanup', '--dry-run', '--run-id', result['run_id']],
            parse_output=True)
        self.assertEqual([], listed)

    def test_failure_midway_leaves_nothing(self):
        # A --timeout too short for the upload: the run fails in one of its
        # waits, after it has created temporaries (and maybe the image).
        vol = self.create_volume(1)
        self.write_random(vol['id'], mib=256)
        self.minicloud('attach', vol['id'])
        name = self.unique_name('ft-timeout')
        p = self.backup('--via-image', '--name', name, '--timeout', '4',
                        vol['id'])
        self.addCleanup(lambda: [self.delete_image(i.id)
                                 for i in self.images_named(name)])
        self.assertNotEqual(0, p.returncode, p.stdout)
        self.assertIn('Timed out', p.stderr)
        self.assertEqual([], self.temporaries(vol['id']))
        self.assertEqual([], self.images_named(name))

    def test_ctrl_c_cleans_up(self):
        vol = self.create_volume(1)
        self.write_random(vol['id'], mib=256)
        self.minicloud('attach', vol['id'])
        name = self.unique_name('ft-sigint')
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                'volume', 'create', '--via-image', '--name', name, vol['id']]
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: [self.delete_image(i.id)
                                 for i in self.images_named(name)])
        self.wait_for(lambda: self.temporaries(vol['id']),
                      what='the temporary snapshot')
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=600)
        self.assertEqual(130, proc.returncode, err)
        self.assertEqual([], self.temporaries(vol['id']))
        self.assertEqual([], self.images_named(name))

    def test_cleanup_removes_what_a_killed_run_left(self):
        vol = self.create_volume(1)
        self.write_random(vol['id'], mib=16)
        self.minicloud('attach', vol['id'])
        name = self.unique_name('ft-kill')
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                'volume', 'create', '--via-image', '--name', name, vol['id']]
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: [self.delete_image(i.id)
                                 for i in self.images_named(name)])
        self.wait_for(lambda: self.temporaries(vol['id']),
                      what='the temporary snapshot')
        proc.kill()  # SIGKILL: no cleanup can run
        proc.wait(timeout=60)
        # What the killed run left: its snapshot, or (killed later) its
        # temporary volume, whose snapshot's deletion may have been
        # requested already (it is released once the volume is available)
        left = [t for t in self.temporaries(vol['id']) if t[2] != 'deleting']
        self.assertTrue(left, self.temporaries(vol['id']))
        get = (self.conn.block_storage.get_volume if left[0][0] == 'Volume'
               else self.conn.block_storage.get_snapshot)
        run_id = get(left[0][1]).metadata['osc_backup_run_id']
        listed = self.openstack(
            ['backup', 'cleanup', '--dry-run', '--run-id', run_id],
            parse_output=True)
        listed_ids = [row['ID'] for row in listed]
        for _kind, ident, _status in left:
            self.assertIn(ident, listed_ids)
        self.assertTrue(all(r['Result'] == 'would delete' for r in listed))
        # give a started temporary volume time to appear, then clean up
        time.sleep(3)
        removed = self.openstack(['backup', 'cleanup', '--run-id', run_id],
                                 parse_output=True)
        self.assertTrue(all(r['Result'] == 'deleted' for r in removed),
                        removed)
        self.assertEqual([], self.temporaries(vol['id']))


class TestRecords(VolumeViaImageTestCase):
    """An image's record describes its own backup, whatever the volume
    it was made from inherited; a killed upload is found by cleanup."""

    def restore(self, source):
        out = self.openstack(['backup', 'volume', 'restore', source],
                             parse_output=True)
        self.addCleanup(self._delete_volume, out['volume_id'],
                        base.MEMBER_CLOUD)
        return out

    def test_backup_of_a_restored_volume_has_a_fresh_record(self):
        vol = self.create_volume(1)
        expected = self.write_random(vol['id'], mib=8)
        first, _ = self.backup_json('--via-image', vol['id'])
        # as if the first image had been made by `backup server create`
        self.openstack(['image', 'set', '--property',
                        'osc_backup_server_id=old-server', '--property',
                        'osc_backup_device=/dev/vdb', first['image_id']])
        restored = self.restore(first['image_id'])
        self.assertTrue(restored['name'].startswith(vol['name']))
        info = self.conn.block_storage.get_volume(restored['volume_id'])
        # the premise: Cinder gave the restored volume the old record
        self.assertEqual(
            'old-server', info.volume_image_metadata['osc_backup_server_id'])
        self.assertEqual(
            first['run_id'],
            info.volume_image_metadata['osc_backup_run_id'])
        # the restore target: final name, our metadata, no temporary mark
        self.assertEqual(restored['run_id'],
                         info.metadata['osc_backup_run_id'])
        self.assertNotIn('osc_backup_temporary', info.metadata)
        self.assertEqual(expected, self.volume_sha256(restored['volume_id']))

        second, _ = self.backup_json('--via-image', restored['volume_id'])
        props = self.conn.image.get_image(second['image_id']).properties
        record = {k: v for k, v in props.items()
                  if k.startswith('osc_backup_')}
        self.assertEqual(restored['volume_id'],
                         record['osc_backup_source_volume_id'])
        self.assertEqual(restored['name'],
                         record['osc_backup_source_volume_name'])
        self.assertEqual(second['run_id'], record['osc_backup_run_id'])
        self.assertNotIn('osc_backup_server_id', record)
        self.assertNotIn('osc_backup_device', record)
        # exactly the keys a volume image's record has
        first_props = self.conn.image.get_image(first['image_id']).properties
        self.assertEqual(
            sorted(k for k in first_props if k.startswith('osc_backup_')
                   and k not in ('osc_backup_server_id',
                                 'osc_backup_device')),
            sorted(record))
        self.assertEqual(second['name'],
                         self.conn.image.get_image(second['image_id']).name)

    def test_killed_upload_is_found_and_removed_by_cleanup(self):
        vol = self.create_volume(1)
        self.write_random(vol['id'], mib=512)
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                'volume', 'create', '--via-image', '--name',
                self.unique_name('ft-killed'), vol['id']]
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        suffix = f'-image-of-{vol["name"]}'

        def uploading():
            return [i for i in self.conn.image.images()
                    if (i.name or '').startswith('osc-backup-tmp-')
                    and i.name.endswith(suffix)]

        found = self.wait_for(uploading, what='the upload under a '
                              'temporary name')
        proc.kill()  # SIGKILL: no cleanup, no record
        proc.wait(timeout=60)
        image = found[0]
        self.addCleanup(self.delete_image, image.id)
        run_id = image.name[len('osc-backup-tmp-'):][:12]
        listed = self.openstack(
            ['backup', 'cleanup', '--dry-run', '--run-id', run_id],
            parse_output=True)
        rows = {row['ID']: row for row in listed}
        self.assertIn(image.id, rows)
        self.assertIn('never got its record', rows[image.id]['What'])
        self.assertEqual(f'openstack image delete {image.id}',
                         rows[image.id]['Remove Command'])
        removed = self.openstack(['backup', 'cleanup', '--run-id', run_id],
                                 parse_output=True)
        self.assertTrue(all(r['Result'] == 'deleted' for r in removed),
                        removed)
        self.assertEqual([], uploading())
        # the source comes back once Cinder notices its image is gone
        self.wait_for_status('volume', vol['id'], 'available')


class TestVolumeViaImageBadInput(VolumeViaImageTestCase):
    def assert_one_line_error(self, p, *needles):
        self.assertNotEqual(0, p.returncode)
        self.assertEqual('', p.stdout)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        self.assertEqual(1, len(lines), p.stderr)
        for needle in needles:
            self.assertIn(needle, lines[0])

    def test_unknown_volume(self):
        p = self.backup('--via-image', 'no-such-volume-xyz')
        self.assert_one_line_error(p, "No volume with name or ID",
                                   'no-such-volume-xyz')

    def test_wrong_status_creates_nothing(self):
        vol = self.create_volume(1)
        self.openstack(['volume', 'set', '--state', 'error', vol['id']],
                       cloud=base.ADMIN_CLOUD)
        self.addCleanup(self.openstack, ['volume', 'set', '--state',
                                         'available', vol['id']],
                        cloud=base.ADMIN_CLOUD)
        name = self.unique_name('ft-bad')
        p = self.backup('--via-image', '--name', name, vol['id'])
        self.assert_one_line_error(p, "'error'", vol['id'])
        self.assertEqual([], self.temporaries(vol['id']))
        self.assertEqual([], self.images_named(name))

    def test_bad_flag_mix(self):
        vol = self.create_volume(1)
        self.minicloud('attach', vol['id'])
        p = self.backup('--via-image', '--no-wait', vol['id'])
        self.assert_one_line_error(p, '--no-wait')
        self.assertEqual([], self.temporaries(vol['id']))

    def test_dry_run_creates_nothing(self):
        vol = self.create_volume(1)
        self.minicloud('attach', vol['id'])
        name = self.unique_name('ft-dry')
        out = self.openstack(['backup', 'volume', 'create', '--via-image',
                              '--dry-run', '--name', name, vol['id']],
                             parse_output=True)
        self.assertTrue(out['dry_run'])
        self.assertEqual('crash-consistent', out['consistency'])
        # force exactly where the microversion sent needs it (< 3.66)
        step = out['steps'][0]
        sent = step.split('(microversion ')[1].split(')')[0]
        minor = int(sent.split('.')[1])
        self.assertIn('force=true' if minor < 66 else 'without force', step)
        self.assertEqual([], self.temporaries(vol['id']))
        self.assertEqual([], self.images_named(name))
