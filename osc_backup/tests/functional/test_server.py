"""`openstack backup server create` on the local real cloud (with Nova).

Nova runs with the minicloud's fake virt driver, which keeps each
image-booted server's root disk as a file (`tools/minicloud server-disk`)
and uploads that file's bytes when Nova snapshots the server. The tests
write known bytes into that disk and into attached volumes, back the
server up with the real `openstack` binary, and compare sha256 of what
comes back out of Glance with the bytes written.
"""

import json
import os
import signal
import subprocess
import tempfile
import time

from osc_backup.tests.functional import base

COMPUTE_API = ['--os-compute-api-version', '2.79']
MiB = 1024 * 1024


class ServerTestBase(base.FunctionalTestCase):
    """Servers, volumes and images of a test (no tests: shared with
    test_server_restore)."""

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix='osc-backup-ft-')
        self.addCleanup(subprocess.run, ['rm', '-rf', self.tmp])

    # ---- helpers ------------------------------------------------------
    def backup(self, *args):
        return self.run_cli(['backup', 'server', 'create', *args])

    def backup_json(self, *args):
        p = self.backup(*args, '-f', 'json')
        if p.returncode != 0:
            raise base.CommandFailed(p.returncode, args, p.stdout, p.stderr)
        result = json.loads(p.stdout)
        for artifact in result['artifacts']:
            if artifact['artifact'] == 'image':
                self.addCleanup(self._delete_simple, 'image', artifact['id'],
                                base.MEMBER_CLOUD)
        return result, p.stderr

    def create_raw_image(self, mib=8):
        path = os.path.join(self.tmp, 'base.raw')
        with open(path, 'wb') as f:
            f.write(os.urandom(mib * MiB))
        name = self.unique_name()
        image = self.openstack(
            ['image', 'create', '--disk-format', 'raw', '--container-format',
             'bare', '--file', path, name], parse_output=True)
        self.addCleanup(self._delete_simple, 'image', image['id'],
                        base.MEMBER_CLOUD)
        return image, base.sha256_file(path)

    def create_server(self, *, image=None, volume=None, name=None):
        args = [*COMPUTE_API, 'server', 'create', '--flavor', 'm1.tiny',
                '--nic', 'none', '--wait']
        args += ['--image', image] if image else ['--volume', volume]
        args.append(name or self.unique_name())
        server = self.openstack(args, parse_output=True)
        self.addCleanup(self._delete_server, server['id'])
        self.assertEqual('ACTIVE', server['status'])
        return server

    def _delete_server(self, ident):
        self.openstack(['server', 'delete', '--wait', ident], fail_ok=True)

    def attach(self, server, volume):
        self.openstack([*COMPUTE_API, 'server', 'add', 'volume', server,
                        volume])
        # cleanups run last-in first-out: detached before it is deleted
        self.addCleanup(self._detach, server, volume)
        self.wait_for_status('volume', volume, 'in-use')

    def _detach(self, server, volume):
        self.openstack([*COMPUTE_API, 'server', 'remove', 'volume', server,
                        volume], fail_ok=True)
        self.wait_for_status('volume', volume, 'available')

    def interrupted(self, args, ready, what, *, interval=0.5):
        """Run `openstack --os-cloud minicloud ARGS`, send it SIGINT once
        ``ready()`` holds (failing if it ends first or ``what`` never
        comes), and return ``(exit status, stdout, stderr)``."""
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, *args]
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + base.WAIT_TIMEOUT
        while not ready():
            if proc.poll() is not None:
                out, err = proc.communicate()
                self.record(argv, proc.returncode, out, err)
                self.fail(f'finished before the signal (no {what})')
            self.assertLess(time.time(), deadline, f'no {what}')
            time.sleep(interval)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
        self.record(argv, proc.returncode, out, err)
        return proc.returncode, out, err

    def saved_sha256(self, image_id):
        path = os.path.join(self.tmp, image_id)
        self.openstack(['backup', 'image', 'save', '--file', path, image_id])
        sha = base.sha256_file(path)
        for leftover in (path, path + '.manifest.json', path + '.sha512'):
            if os.path.exists(leftover):
                os.unlink(leftover)
        return sha

    def our_leftovers(self, source):
        """Temporary snapshots/volumes of osc-backup of the volume named
        ``source`` (unique to this test: other tests run meanwhile)."""
        names = [
            v['Name'] or '' for v in self.openstack(
                'volume list', parse_output=True)
        ] + [
            s['Name'] or '' for s in self.openstack(
                'volume snapshot list', parse_output=True)
        ]
        return [n for n in names
                if n.startswith('osc-backup-tmp-') and n.endswith(source)]


class ServerBackupTestCase(ServerTestBase):
    # ---- tests ----------------------------------------------------------
    def test_image_booted_server_with_a_volume(self):
        image, _base_sha = self.create_raw_image()
        server = self.create_server(image=image['id'])
        disk = self.minicloud('server-disk', server['id']).stdout.strip()
        # known bytes on the root disk, as the guest would have written
        subprocess.run(
            ['dd', 'if=/dev/urandom', 'of=' + disk, 'bs=1M', 'count=2',
             'seek=3', 'conv=notrunc', 'status=none'], check=True)
        disk_sha = base.sha256_file(disk)
        vol = self.create_volume(1)
        vol_sha = self.write_random(vol['id'], mib=3)
        self.attach(server['id'], vol['id'])

        result, stderr = self.backup_json(server['id'], '--download',
                                          self.tmp)
        # "nothing left when I return": the run's temporaries are gone,
        # not even 'deleting' (listed before anything else is done)
        self.assertEqual([], self.temporaries(result['run_id']))

        self.assertFalse(result['volume_backed'])
        self.assertEqual('crash-consistent', result['consistency'])
        roles = [(a['disk'], a['artifact'], a['boot_index'])
                 for a in result['artifacts']]
        self.assertEqual(
            [('root-disk', 'image', 0), ('volume', 'image', None)], roles)
        root, volume = result['artifacts']
        self.assertEqual(vol['id'], volume['volume_id'])
        self.assertIn('copies only the root disk', ' '.join(result['notes']))
        self.assertIn('crash-consistent', stderr)
        # the downloaded backup sets hold exactly the bytes written
        files = result['files']
        data = [f for f in files if not f.endswith(
            ('.json', '.sha512', '.key', '.luks-passphrase'))]
        self.assertEqual(2, len(data), files)
        self.assertEqual(disk_sha, base.sha256_file(data[0]))
        self.assertEqual(vol_sha, base.sha256_file(data[1]))
        for f in files:
            if f.endswith('.sha512'):
                subprocess.run(['sha512sum', '--quiet', '-c', f],
                               cwd=os.path.dirname(f), check=True)
        # the server manifest ties it together
        with open(result['manifest']) as f:
            manifest = json.load(f)
        self.assertEqual(server['id'], manifest['server']['id'])
        self.assertEqual(image['id'], manifest['server']['image_id'])
        self.assertEqual('m1.tiny',
                         manifest['server']['flavor']['original_name'])
        self.assertEqual(
            [root['id'], volume['id']],
            [d['artifact']['image_id'] for d in manifest['disks']])
        # each artifact records its server
        props = self.openstack(['image', 'show', volume['id']],
                               parse_output=True)['properties']
        self.assertEqual(server['id'], props['osc_backup_server_id'])
        self.assertEqual(vol['id'], props['osc_backup_source_volume_id'])

    def test_volume_booted_server_stopped(self):
        boot = self.create_volume(1)
        self.openstack(['volume', 'set', '--bootable', boot['id']])
        boot_sha = self.write_random(boot['id'], mib=4)
        server = self.create_server(volume=boot['id'])
        self.openstack(['server', 'stop', server['id']])
        self.wait_for_status('server', server['id'], 'SHUTOFF')

        p = self.backup(server['id'], '--no-volumes')
        self.assertEqual(1, p.returncode)
        self.assertIn('nothing to back up', p.stderr)

        result, _stderr = self.backup_json(server['id'], '--via-image')

        self.assertTrue(result['volume_backed'])
        self.assertEqual('offline', result['consistency'])
        [artifact] = result['artifacts']
        self.assertEqual(('volume', boot['id'], 0, 'offline'),
                         (artifact['disk'], artifact['volume_id'],
                          artifact['boot_index'], artifact['consistency']))
        self.assertIn('an image with no data', ' '.join(result['notes']))
        self.assertEqual(boot_sha, self.saved_sha256(artifact['id']))
        # Nova's createImage was not used: no snapshot of the volume exists
        snapshots = self.openstack(['volume', 'snapshot', 'list',
                                    '--volume', boot['id']],
                                   parse_output=True)
        self.assertEqual([], snapshots)
        self.assertEqual([], self.temporaries(result['run_id']))

    def test_ctrl_c_keeps_and_names_what_is_done(self):
        image, _sha = self.create_raw_image()
        server = self.create_server(image=image['id'])
        vol = self.create_volume(1)
        self.write_random(vol['id'], mib=256)
        self.attach(server['id'], vol['id'])
        # every disk is captured first (the volume's snapshot, then the
        # root image); the root disk is done once the volume's temporary
        # volume (made from that snapshot) exists
        returncode, _out, err = self.interrupted(
            ['backup', 'server', 'create', '--via-image', server['id']],
            lambda: [n for n in self.our_leftovers(vol['name'])
                     if '-volume-of-' in n],
            'temporary volume',
        )
        roots = self.openstack(
            ['image', 'list', '--property',
             f"osc_backup_server_id={server['id']}"], parse_output=True)
        for root in roots:
            self.addCleanup(self._delete_simple, 'image', root['ID'],
                            base.MEMBER_CLOUD)
        self.assertEqual(130, returncode, err)
        self.assertEqual(1, len(roots), roots)
        self.assertEqual('active', roots[0]['Status'])
        self.assertIn('kept (complete)', err)
        self.assertIn(roots[0]['ID'], err)
        # the volume's temporaries are gone, and it is attached as before
        self.assertEqual([], self.our_leftovers(vol['name']), err)
        self.assertEqual('in-use', self.openstack(
            ['volume', 'show', vol['id']], parse_output=True)['status'])

    def test_via_backup_and_restore_of_a_volume(self):
        image, _sha = self.create_raw_image()
        server = self.create_server(image=image['id'])
        vol = self.create_volume(1)
        vol_sha = self.write_random(vol['id'], mib=8)
        self.attach(server['id'], vol['id'])

        result, _stderr = self.backup_json(server['id'], '--via-backup')

        root, volume = result['artifacts']
        self.assertEqual(('root-disk', 'image'),
                         (root['disk'], root['artifact']))
        self.assertEqual(('volume', 'backup', 'backup', vol['id']),
                         (volume['disk'], volume['artifact'],
                          volume['method'], volume['volume_id']))
        self.assertEqual('requested with --via-backup',
                         result['method_reason'])
        self.addCleanup(self._delete_simple, 'volume backup', volume['id'],
                        base.MEMBER_CLOUD)
        record = self.openstack(
            ['--os-volume-api-version', '3.43', 'volume', 'backup', 'show',
             volume['id']], parse_output=True)
        self.assertEqual(server['id'],
                         record['metadata']['osc_backup_server_id'])
        self.assertEqual('volume', record['metadata']['osc_backup_server_disk'])
        # the volume comes back with the bytes it had
        restored = self.openstack(
            ['backup', 'volume', 'restore', volume['id']], parse_output=True)
        self.addCleanup(self._delete_volume, restored['volume_id'],
                        base.MEMBER_CLOUD)
        self.assertEqual(vol_sha, self.volume_sha256(restored['volume_id']))
        self.assertEqual([], self.temporaries(result['run_id']))

    def test_root_image_of_a_server_booted_from_a_backup_image(self):
        # a backup image of a volume (osc-backup's full volume record) ...
        vol = self.create_volume(1)
        self.write_random(vol['id'], mib=2)
        made = self.openstack(['backup', 'volume', 'create', '--via-image',
                               vol['id']], parse_output=True)
        self.addCleanup(self._delete_simple, 'image', made['image_id'],
                        base.MEMBER_CLOUD)
        inherited = self.openstack(['image', 'show', made['image_id']],
                                   parse_output=True)['properties']
        self.assertEqual(vol['id'], inherited['osc_backup_source_volume_id'])
        # ... booted as a server: Nova copies its properties into snapshots
        server = self.create_server(image=made['image_id'])

        result, stderr = self.backup_json(server['id'])

        [root] = result['artifacts']
        props = self.openstack(['image', 'show', root['id']],
                               parse_output=True)['properties']
        record = {k: v for k, v in props.items()
                  if k.startswith('osc_backup_')}
        self.assertEqual(
            {'osc_backup_tool': 'osc-backup',
             'osc_backup_method': 'server-image',
             'osc_backup_consistency': 'crash-consistent',
             'osc_backup_run_id': result['run_id'],
             'osc_backup_flavor': 'm1.tiny',
             'osc_backup_server_id': server['id'],
             'osc_backup_server_name': server['name'],
             'osc_backup_server_disk': 'root-disk',
             'osc_backup_device': record.get('osc_backup_device'),
             'osc_backup_boot_index': '0',
             # what a restore from the run needs (no key pair, no
             # metadata, no networks on the minicloud)
             'osc_backup_availability_zone': 'nova',
             'osc_backup_server_metadata': '{}',
             'osc_backup_networks': '[]'},
            {k: v for k, v in record.items()
             if k not in ('osc_backup_tool_version',
                          'osc_backup_created_at')}, stderr)
        self.assertTrue(record['osc_backup_created_at'].startswith('20'))
        self.assertTrue(record['osc_backup_tool_version'])

    def test_bad_input_creates_nothing(self):
        p = self.backup('no-such-server-' + self.unique_name())
        self.assertEqual(1, p.returncode)
        self.assertIn('No server with name or ID', p.stderr)
        self.assertEqual(1, len(p.stderr.strip().splitlines()), p.stderr)
