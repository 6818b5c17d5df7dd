"""``openstack backup run`` with SERVER targets on the local real cloud.

The test selects only its own server and volumes, by a metadata pair with
a value of its own (``--property osc-backup-ft-run=<unique>``: server
metadata for the server, volume metadata for the volumes), so the other
tests running in the same project are never touched.
"""

import json
import os
import stat

from osc_backup.tests.functional import test_server

KEY = 'osc-backup-ft-run'
IMAGE_SET = 'osc-backup-image-set'


class RunServersTestCase(test_server.ServerTestBase):
    def setUp(self):
        super().setUp()
        self.value = self.unique_name('sel')

    def selected_volume(self, offset_mib):
        vol = self.create_volume(1, name=self.unique_name('ft-run-srv'))
        self.openstack(['volume', 'set', '--property',
                        f'{KEY}={self.value}', vol['id']])
        return vol, self.write_random(vol['id'], mib=3,
                                      offset_mib=offset_mib)

    def image_sets(self, directory):
        """``{source volume ID or server disk: data file}`` of the image
        sets in ``directory``, read from their manifests."""
        found = {}
        for name in os.listdir(directory):
            if not name.endswith('.manifest.json'):
                continue
            with open(os.path.join(directory, name)) as f:
                manifest = json.load(f)
            if manifest.get('format') != IMAGE_SET:
                continue  # the server manifest
            backup = manifest['backup']
            source = (backup.get('osc_backup_source_volume_id')
                      or backup.get('osc_backup_server_disk'))
            self.assertNotIn(source, found, manifest)
            found[source] = os.path.join(directory, manifest['data']['file'])
        return found

    def test_server_and_detached_volume_with_download(self):
        image, _sha = self.create_raw_image()
        server = self.create_server(image=image['id'],
                                    name=self.unique_name('ft-run-srv'))
        self.openstack(['server', 'set', '--property', f'{KEY}={self.value}',
                        server['id']])
        attached, attached_sha = self.selected_volume(offset_mib=1)
        self.attach(server['id'], attached['id'])
        detached, detached_sha = self.selected_volume(offset_mib=50)
        directory = os.path.join(self.tmp, 'download')
        os.mkdir(directory, 0o700)

        p = self.run_cli(['backup', 'run', '--property',
                          f'{KEY}={self.value}', '--via-image', '--download',
                          directory, '-f', 'json'])
        rows = json.loads(p.stdout or '[]')
        for row in rows:
            for ident in row.get('Backup') or []:
                self.addCleanup(self.delete_image_if_present, ident)
        self.assertEqual(0, p.returncode, p.stderr)

        # one row per resource: the attached volume is part of its server
        by_id = {row['Resource']: row for row in rows}
        self.assertEqual({server['id'], detached['id']}, set(by_id), rows)
        self.assertEqual(2, len(rows), rows)
        srow, vrow = by_id[server['id']], by_id[detached['id']]
        self.assertEqual(('server', 'ok'), (srow['Type'], srow['Result']),
                         srow)
        self.assertEqual(('volume', 'ok', 'image'),
                         (vrow['Type'], vrow['Result'], vrow['Method']),
                         vrow)
        # root disk image and the attached volume's image
        self.assertEqual(2, len(srow['Backup']), srow)
        self.assertEqual(1, len(vrow['Backup']), vrow)
        for ident in srow['Backup'] + vrow['Backup']:
            shown = self.openstack(['image', 'show', ident],
                                   parse_output=True)
            self.assertEqual('active', shown['status'], shown)
        self.assertIn('2 resource(s): 2 ok, 0 failed, 0 skipped', p.stderr)

        # one directory per resource, 0700
        subdirs = sorted(os.listdir(directory))
        self.assertEqual(2, len(subdirs), subdirs)
        sdir = [d for d in subdirs
                if d.startswith(f'server-{server["id"]}-')]
        vdir = [d for d in subdirs
                if d.startswith(f'volume-{detached["id"]}-')]
        self.assertEqual(1, len(sdir), subdirs)
        self.assertEqual(1, len(vdir), subdirs)
        self.assertIn(server['name'], sdir[0])
        self.assertIn(detached['name'], vdir[0])
        for sub in subdirs:
            st = os.lstat(os.path.join(directory, sub))
            self.assertTrue(stat.S_ISDIR(st.st_mode), sub)
            self.assertEqual(0o700, stat.S_IMODE(st.st_mode), sub)

        # the bytes written come back out of the downloads
        sets = self.image_sets(os.path.join(directory, sdir[0]))
        self.assertEqual({'root-disk', attached['id']}, set(sets), sets)
        self.assertEqual(attached_sha,
                         self.sha256_file(sets[attached['id']]))
        vsets = self.image_sets(os.path.join(directory, vdir[0]))
        self.assertEqual([detached['id']], list(vsets), vsets)
        self.assertEqual(detached_sha,
                         self.sha256_file(vsets[detached['id']]))

        # nothing left behind; the server runs on, its volume attached
        self.assertEqual([], self.temporaries_of(
            [server['name'], attached['name'], detached['name']]))
        self.assertEqual('ACTIVE', self.openstack(
            ['server', 'show', server['id']], parse_output=True)['status'])
        self.assertEqual('in-use', self.openstack(
            ['volume', 'show', attached['id']], parse_output=True)['status'])
        self.assertEqual('available', self.openstack(
            ['volume', 'show', detached['id']],
            parse_output=True)['status'])
