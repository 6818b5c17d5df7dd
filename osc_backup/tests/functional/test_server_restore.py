"""`openstack backup server restore` on the local real cloud (with Nova).

Known bytes go onto a server's root disk (the fake virt driver's disk
file, `tools/minicloud server-disk`) and onto its volumes; the server is
backed up with `backup server create`, restored with `backup server
restore`, and the restored server's root disk file and volumes must hold
exactly those bytes, attached in the recorded order. Every resource a
test makes (and every one the restore makes) is deleted; what a restore
that failed or was interrupted leaves is checked to be nothing.
"""

import json
import os
import subprocess
import tempfile

from osc_backup.tests.functional import base
from osc_backup.tests.functional.test_server import COMPUTE_API
from osc_backup.tests.functional.test_server import ServerTestBase


class ServerRestoreTestBase(ServerTestBase):
    """Helpers of the restore tests (no tests: shared with
    test_server_restore_cleanup)."""

    def restore(self, *args, cloud=base.MEMBER_CLOUD):
        return self.run_cli(['backup', 'server', 'restore', *args],
                            cloud=cloud)

    def restore_json(self, *args, cloud=base.MEMBER_CLOUD):
        p = self.restore(*args, '-f', 'json', cloud=cloud)
        if p.returncode != 0:
            raise base.CommandFailed(p.returncode, args, p.stdout, p.stderr)
        result = json.loads(p.stdout)
        # cleanups run last-in first-out: the server goes before its
        # volumes, the root image after the server
        if result.get('image_id') and result['uploaded']:
            self.addCleanup(self._delete_simple, 'image', result['image_id'],
                            cloud)
        for vol in result['volumes']:
            self.addCleanup(self._delete_volume, vol['volume_id'], cloud)
        self.addCleanup(self._delete_server_in, result['server_id'], cloud)
        return result, p.stderr

    def _delete_server_in(self, ident, cloud):
        self.openstack(['server', 'delete', '--wait', ident], cloud=cloud,
                       fail_ok=True)

    def disk_sha(self, server, cloud=base.MEMBER_CLOUD):
        path = self.minicloud('server-disk', '--cloud', cloud,
                              server).stdout.strip()
        return base.sha256_file(path)

    def volume_sha(self, volume, size_gb, cloud=base.MEMBER_CLOUD):
        path = self.minicloud('volume-path', '--cloud', cloud,
                              volume).stdout.strip()
        return base.sha256_file(path, length=size_gb * base.GiB)

    def attached(self, server, cloud=base.MEMBER_CLOUD):
        """[(device, volume ID)] of the server, sorted by device."""
        rows = self.openstack([*COMPUTE_API, 'server', 'volume', 'list',
                               server], cloud=cloud, parse_output=True)
        return sorted(((r['Device'], r['Volume ID']) for r in rows),
                      key=lambda d: (len(d[0]), d[0]))

    def named(self, kind, prefix, cloud=base.MEMBER_CLOUD):
        """Names of `kind` ('server', 'volume', 'image') that start with
        `prefix` (unique to a test)."""
        rows = self.openstack([kind, 'list'], cloud=cloud, parse_output=True)
        return [r['Name'] for r in rows
                if (r.get('Name') or '').startswith(prefix)]

    def image_booted(self, volumes=1):
        """An image-booted server with known bytes on its root disk and
        `volumes` attached 1 GiB volumes with known bytes:
        (server, root disk sha256, [(volume, sha256)] in device order)."""
        image, _sha = self.create_raw_image()
        server = self.create_server(image=image['id'])
        disk = self.minicloud('server-disk', server['id']).stdout.strip()
        subprocess.run(
            ['dd', 'if=/dev/urandom', 'of=' + disk, 'bs=1M', 'count=2',
             'seek=3', 'conv=notrunc', 'status=none'], check=True)
        vols = []
        for _ in range(volumes):
            vol = self.create_volume(1)
            vols.append((vol, self.write_random(vol['id'], mib=3)))
            self.attach(server['id'], vol['id'])
        return server, base.sha256_file(disk), vols


class ServerRestoreTestCase(ServerRestoreTestBase):
    def test_image_booted_server_from_a_run(self):
        server, disk_sha, vols = self.image_booted(volumes=2)
        made, _err = self.backup_json(server['id'], '--via-image')
        run_id = made['run_id']
        name = self.unique_name('osc-backup-ft-restored')

        # --dry-run: the plan, and nothing made
        p = self.restore(run_id, '--nic', 'none', '--name', name,
                         '--dry-run', '-f', 'json')
        self.assertEqual(0, p.returncode, p.stderr)
        plan = json.loads(p.stdout)
        self.assertTrue(plan['dry_run'])
        self.assertEqual('m1.tiny', plan['flavor'])
        self.assertEqual(run_id, plan['source_run_id'])
        steps = '\n'.join(plan['steps'])
        self.assertIn('create server ' + name, steps)
        self.assertEqual(2, steps.count('attach the volume'), steps)
        self.assertEqual([], self.named('server', name))

        result, _err = self.restore_json(run_id, '--nic', 'none',
                                         '--name', name)

        self.assertEqual('ACTIVE', result['server_status'])
        self.assertFalse(result['volume_backed'])
        self.assertEqual(made['artifacts'][0]['id'], result['image_id'])
        self.assertEqual(server['id'], result['source_server_id'])
        # the root disk holds the bytes of the backed-up one
        self.assertEqual(disk_sha, self.disk_sha(result['server_id']))
        # each volume its bytes, attached in the recorded order
        attached = self.attached(result['server_id'])
        self.assertEqual(2, len(attached), attached)
        self.assertEqual([v['volume_id'] for v in result['volumes']],
                         [vol_id for _dev, vol_id in attached])
        for (_dev, vol_id), (orig, sha) in zip(attached, vols):
            self.assertEqual(sha, self.volume_sha(vol_id, 1), orig['id'])
        shown = self.openstack(['--os-compute-api-version', '2.90', 'server',
                                'show', result['server_id']],
                               parse_output=True)
        self.assertEqual(f'run:{run_id}',
                         shown['properties']['osc_backup_restored_from'])
        # created under its temporary name, given its final name last; the
        # hostname is that of the final name (Nova takes it from 2.90 on)
        self.assertEqual(name, shown['name'])
        self.assertEqual(name, shown['OS-EXT-SRV-ATTR:hostname'])
        self.assertEqual([], self.temporaries(result['run_id']))

    def test_volume_booted_server_via_backup(self):
        boot = self.create_volume(1)
        self.openstack(['volume', 'set', '--bootable', boot['id']])
        boot_sha = self.write_random(boot['id'], mib=4)
        server = self.create_server(volume=boot['id'])
        data = self.create_volume(1)
        data_sha = self.write_random(data['id'], mib=2)
        self.attach(server['id'], data['id'])
        made, _err = self.backup_json(server['id'], '--via-backup')
        for artifact in made['artifacts']:
            self.addCleanup(self._delete_simple, 'volume backup',
                            artifact['id'], base.MEMBER_CLOUD)
        self.assertEqual(['backup', 'backup'],
                         [a['artifact'] for a in made['artifacts']])

        result, _err = self.restore_json('--latest', server['id'],
                                         '--nic', 'none')

        self.assertEqual(made['run_id'], result['source_run_id'])
        self.assertTrue(result['volume_backed'])
        self.assertIsNone(result['image_id'])
        boot_new, data_new = result['volumes']
        self.assertEqual(0, boot_new['boot_index'])
        # booted from the restored volume, the other one attached after it
        attached = self.attached(result['server_id'])
        self.assertEqual([boot_new['volume_id'], data_new['volume_id']],
                         [vol_id for _dev, vol_id in attached])
        shown = self.openstack(['server', 'show', result['server_id']],
                               parse_output=True)
        # OSC shows 'N/A (booted from volume)' where other servers have
        # their image
        self.assertTrue(not shown.get('image') or 'N/A' in shown['image'],
                        shown.get('image'))
        self.assertEqual(boot_sha, self.volume_sha(boot_new['volume_id'], 1))
        self.assertEqual(data_sha, self.volume_sha(data_new['volume_id'], 1))
        self.assertEqual([], self.temporaries(result['run_id']))

    def test_download_directory_into_another_project(self):
        server, disk_sha, [(_vol, vol_sha)] = self.image_booted(volumes=1)
        made, _err = self.backup_json(server['id'], '--download', self.tmp)
        admin = base.ADMIN_CLOUD
        name = self.unique_name('osc-backup-ft-dr')

        # a flavor or volume type the target lacks: refused, named, and
        # nothing is created
        with open(made['manifest']) as f:
            manifest = json.load(f)
        # a copy of the directory (hard links: no symlink may lead out)
        changed = tempfile.mkdtemp(prefix='osc-backup-ft-')
        self.addCleanup(subprocess.run, ['rm', '-rf', changed])
        subprocess.run(['cp', '-al', self.tmp + '/.', changed], check=True)
        mpath = os.path.join(changed, os.path.basename(made['manifest']))
        os.unlink(mpath)
        manifest['server']['flavor']['original_name'] = 'no-such-flavor'
        manifest['disks'][1]['volume']['volume_type'] = 'no-such-type'
        with open(mpath, 'w') as f:
            json.dump(manifest, f)
        p = self.restore(changed, '--nic', 'none', '--name', name,
                         cloud=admin)
        self.assertEqual(1, p.returncode, p.stderr)
        self.assertIn("flavor 'no-such-flavor' does not exist", p.stderr)
        self.assertIn('--flavor', p.stderr)
        p = self.restore(changed, '--nic', 'none', '--name', name,
                         '--flavor', 'm1.tiny', cloud=admin)
        self.assertEqual(1, p.returncode, p.stderr)
        self.assertIn('--volume-type no-such-type=<type>', p.stderr)
        for kind in ('server', 'volume', 'image'):
            self.assertEqual([], self.named(kind, name, cloud=admin), kind)

        result, _err = self.restore_json(self.tmp, '--nic', 'none',
                                         '--name', name, cloud=admin)

        self.assertEqual('ACTIVE', result['server_status'])
        self.assertEqual(made['run_id'], result['source_run_id'])
        uploaded = {u['disk']: u for u in result['uploaded']}
        self.assertEqual(2, len(uploaded), uploaded)
        self.assertEqual(disk_sha, self.disk_sha(result['server_id'],
                                                 cloud=admin))
        [(_dev, vol_id)] = self.attached(result['server_id'], cloud=admin)
        self.assertEqual(vol_sha, self.volume_sha(vol_id, 1, cloud=admin))
        # the root image stays (the server boots from it); the volume's
        # image was only the way to the volume
        kept = [u for u in result['uploaded'] if u['kept']]
        gone = [u for u in result['uploaded'] if not u['kept']]
        self.assertEqual([result['image_id']], [u['image_id'] for u in kept])
        self.assertEqual(1, len(gone))
        p = self.run_cli(['image', 'show', gone[0]['image_id']], cloud=admin)
        self.assertNotEqual(0, p.returncode)
        self.assertEqual([], self.temporaries(result['run_id'], cloud=admin))
        # not visible in the member's project
        p = self.run_cli(['server', 'show', result['server_id']])
        self.assertNotEqual(0, p.returncode)

    def test_bad_input_creates_nothing(self):
        p = self.restore('0123456789ab', '--nic', 'none')
        self.assertEqual(1, p.returncode)
        self.assertIn('No server backup of run 0123456789ab', p.stderr)
        self.assertEqual(1, len(p.stderr.strip().splitlines()), p.stderr)
        p = self.restore('not-a-run')
        self.assertEqual(1, p.returncode)
        self.assertIn('neither a run ID', p.stderr)
        p = self.restore('--latest', 'no-such-' + self.unique_name())
        self.assertEqual(1, p.returncode)
        self.assertIn('No server backup of server', p.stderr)
