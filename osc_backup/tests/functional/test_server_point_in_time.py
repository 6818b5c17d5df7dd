"""`openstack backup server create`: every disk at one point in time
(issue 13), on the local real cloud with Nova.

A volume-booted server's volumes come from the snapshots of Nova's one
createImage call; an image-booted server's volumes are snapshotted at
once, with --pause around the capture. The tests check where each
artifact came from, the bytes (sha256), that the server runs again, and
that nothing of the run is left (Nova's snapshots and image included).
The minicloud's Nova driver records the guest freezes it was asked for
(`tools/minicloud quiesce-log`).
"""

import json

from openstack import config as os_config
from openstack import connection

from osc_backup.tests.functional import base
from osc_backup.tests.functional import test_server

NOVA_SNAPSHOT = 'snapshot for osc-backup-tmp-{run}-nova-of-{server}'
AGENT = ['--image-property', 'hw_qemu_guest_agent=yes',
         '--image-property', 'os_require_quiesce=yes']


class PointInTimeTestCase(test_server.ServerTestBase):
    # ---- helpers ------------------------------------------------------
    def volume_booted_server(self, *, data_mib=3, properties=()):
        """A server booted from a volume with known bytes, and a second
        volume attached: (server, [(volume, sha256)])."""
        boot = self.create_volume(1)
        self.openstack(['volume', 'set', '--bootable', *properties,
                        boot['id']])
        boot_sha = self.write_random(boot['id'], mib=4)
        server = self.create_server(volume=boot['id'])
        data = self.create_volume(1)
        data_sha = self.write_random(data['id'], mib=data_mib)
        self.attach(server['id'], data['id'])
        return server, [(boot, boot_sha), (data, data_sha)]

    def snapshots_of(self, volume):
        return self.openstack(['volume', 'snapshot', 'list', '--volume',
                               volume], parse_output=True)

    def images_named(self, prefix):
        return [i for i in self.openstack('image list', parse_output=True)
                if (i['Name'] or '').startswith(prefix)]

    def run_images(self, server):
        """Temporary images of any run of osc-backup for ``server`` (its
        name is unique to the test)."""
        return [
            i for i in self.images_named(base.TEMPORARY_PREFIX)
            if i['Name'].endswith(f"-of-{server['name']}")
        ]

    def assert_nothing_left(self, run_id, server, volumes):
        self.assertEqual([], self.temporaries(run_id))
        for vol in volumes:
            self.assertEqual([], self.snapshots_of(vol['id']), vol['id'])
        self.assertEqual([], self.images_named(
            f'{base.TEMPORARY_PREFIX}{run_id}-'))
        self.assertEqual(
            'ACTIVE', self.openstack(['server', 'show', server['id']],
                                     parse_output=True)['status'])

    def sdk(self):
        """An openstacksdk connection as the member (fast polling)."""
        region = os_config.OpenStackConfig(
            config_files=[self.env['OS_CLIENT_CONFIG_FILE']]
        ).get_one(cloud=base.MEMBER_CLOUD)
        conn = connection.Connection(config=region)
        self.addCleanup(conn.close)
        return conn

    # ---- volume-booted: Nova's createImage ------------------------------
    def test_volume_booted_from_novas_snapshots(self):
        server, disks = self.volume_booted_server()

        result, _stderr = self.backup_json(
            server['id'], '--via-image', '--download', self.tmp)

        self.assertEqual(('one-call', 'crash-consistent'),
                         (result['mode'], result['consistency']))
        self.assertIsInstance(result['skew'], float)
        self.assertEqual(
            [d['id'] for d, _sha in disks],
            [a['volume_id'] for a in result['artifacts']])
        for artifact in result['artifacts']:
            self.assertTrue(artifact['snapshot_id'])
            self.assertTrue(artifact['snapshot_created_at'])
        # the bytes of both volumes come back from the downloads
        data = [f for f in result['files'] if f.endswith('.raw')]
        self.assertEqual([sha for _d, sha in disks],
                         [base.sha256_file(f) for f in data], data)
        with open(result['manifest']) as f:
            manifest = json.load(f)
        self.assertEqual(('one-call', result['skew']),
                         (manifest['mode'], manifest['skew']))
        self.assertEqual(
            [a['snapshot_id'] for a in result['artifacts']],
            [d['artifact']['snapshot_id'] for d in manifest['disks']])
        # Nova's snapshots and its image are gone
        self.assert_nothing_left(result['run_id'], server,
                                 [d for d, _sha in disks])

    def test_kept_snapshots_are_novas_and_cleanup_finds_them(self):
        server, disks = self.volume_booted_server(data_mib=1)

        result, stderr = self.backup_json(
            server['id'], '--via-backup', '--keep-temporary')
        for artifact in result['artifacts']:
            self.addCleanup(self._delete_simple, 'volume backup',
                            artifact['id'], base.MEMBER_CLOUD)

        run_id = result['run_id']
        name = NOVA_SNAPSHOT.format(run=run_id, server=server['name'])
        for (vol, _sha), artifact in zip(disks, result['artifacts'],
                                         strict=True):
            # the snapshot Nova's createImage made, kept on request
            [snap] = self.snapshots_of(vol['id'])
            self.assertEqual((name, artifact['snapshot_id']),
                             (snap['Name'], snap['ID']))
            backup = self.openstack(['volume', 'backup', 'show',
                                     artifact['id']], parse_output=True)
            self.assertEqual((vol['id'], snap['ID']),
                             (backup['volume_id'], backup['snapshot_id']))
        self.assertIn('openstack volume snapshot delete', stderr)
        # Nova's image is gone already (it must not look bootable)
        self.assertEqual([], self.images_named(
            f'{base.TEMPORARY_PREFIX}{run_id}-nova-of-'))
        # `backup cleanup` finds Nova's snapshots by their name
        found = self.openstack(['backup', 'cleanup', '--run-id', run_id],
                               parse_output=True)
        self.assertEqual(
            sorted(a['snapshot_id'] for a in result['artifacts']),
            sorted(row['ID'] for row in found if row['Kind'] == 'snapshot'),
            found)
        self.assert_nothing_left(run_id, server, [d for d, _sha in disks])

    # ---- --quiesce -------------------------------------------------------
    def test_quiesce_refused_without_the_guest_agent(self):
        server, disks = self.volume_booted_server(data_mib=1)
        p = self.backup(server['id'], '--quiesce')
        self.assertEqual(1, p.returncode, p.stderr)
        self.assertEqual(1, len(p.stderr.strip().splitlines()), p.stderr)
        self.assertIn('hw_qemu_guest_agent=yes', p.stderr)
        for vol, _sha in disks:
            self.assertEqual([], self.snapshots_of(vol['id']))
        self.assertEqual([], self.run_images(server))
        self.assertEqual('', self.minicloud('quiesce-log',
                                            server['id']).stdout)

    def test_quiesce_freezes_the_guest(self):
        server, disks = self.volume_booted_server(data_mib=1,
                                                  properties=AGENT)

        result, _stderr = self.backup_json(server['id'], '--quiesce',
                                           '--via-backup')
        for artifact in result['artifacts']:
            self.addCleanup(self._delete_simple, 'volume backup',
                            artifact['id'], base.MEMBER_CLOUD)

        self.assertEqual(('quiesced', 'app-consistent'),
                         (result['mode'], result['consistency']))
        self.assertEqual(['app-consistent'] * 2,
                         [a['consistency'] for a in result['artifacts']])
        calls = [line.split()[1] for line in self.minicloud(
            'quiesce-log', server['id']).stdout.splitlines()]
        self.assertEqual(['quiesce', 'unquiesce'], calls)
        self.assert_nothing_left(result['run_id'], server,
                                 [d for d, _sha in disks])

    # ---- image-booted: --pause ------------------------------------------
    def image_booted_server(self, *, root_mib=8, volume_mib=2):
        image, _sha = self.create_raw_image(mib=root_mib)
        server = self.create_server(image=image['id'])
        vols = []
        for _ in range(2):
            vol = self.create_volume(1)
            sha = self.write_random(vol['id'], mib=volume_mib)
            self.attach(server['id'], vol['id'])
            vols.append((vol, sha))
        return server, vols

    def test_image_booted_paused_together(self):
        server, vols = self.image_booted_server()

        result, _stderr = self.backup_json(server['id'], '--pause',
                                           '--via-image')

        self.assertEqual(('paused', 'crash-consistent'),
                         (result['mode'], result['consistency']))
        self.assertIsInstance(result['skew'], float)
        self.assertLess(result['skew'], 120)
        root, *volumes = result['artifacts']
        self.assertEqual('root-disk', root['disk'])
        self.assertIsNone(root['snapshot_id'])
        self.assertTrue(root['snapshot_created_at'])
        for (vol, sha), artifact in zip(vols, volumes, strict=True):
            self.assertEqual(vol['id'], artifact['volume_id'])
            self.assertTrue(artifact['snapshot_id'])
            self.assertEqual(sha, self.saved_sha256(artifact['id']))
        self.assert_nothing_left(result['run_id'], server,
                                 [v for v, _sha in vols])
        actions = [a['Action'] for a in self.openstack(
            ['server', 'event', 'list', server['id']], parse_output=True)]
        self.assertIn('pause', actions)
        self.assertIn('unpause', actions)

    def test_sigint_while_paused(self):
        # a larger root disk: Nova holds the server (no unpause) while it
        # uploads it, so the pause lasts long enough to be interrupted
        server, vols = self.image_booted_server(root_mib=256)
        conn = self.sdk()
        returncode, _out, err = self.interrupted(
            ['backup', 'server', 'create', '--pause', '--via-image',
             server['id']],
            lambda: conn.compute.get_server(server['id']).status == 'PAUSED',
            'pause', interval=0.1,
        )
        for image in conn.image.images():
            if (image.properties or {}).get('osc_backup_server_id') == \
                    server['id'] or (image.name or '').endswith(
                        f"-root-of-{server['name']}"):
                self.addCleanup(self._delete_simple, 'image', image.id,
                                base.MEMBER_CLOUD)
        self.assertEqual(130, returncode, err)
        self.assertIn('SIGINT', err)
        self.assertEqual('ACTIVE',
                         conn.compute.get_server(server['id']).status, err)
        for vol, _sha in vols:
            self.assertEqual([], self.snapshots_of(vol['id']), err)
        self.assertEqual([], self.run_images(server), err)
        self.assertEqual([], [
            i.id for i in conn.image.images()
            if (i.properties or {}).get('osc_backup_server_id')
            == server['id']], err)
