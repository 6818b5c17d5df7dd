"""Nova in the minicloud: servers the `backup server` verbs can work on.

As the member: boot from an image and from a volume (``--nic none``: the
minicloud has no Neutron, only a stub that answers Nova's reads with empty
lists), the fake root disk file of an image-backed server
(``tools/minicloud server-disk``), `server image create` for both kinds,
volume attach through Nova.  Every resource is deleted by cleanups, and the
last cleanup checks that none is left.
"""

import hashlib
import json
import os
import subprocess
import tempfile

from osc_backup.tests.functional import base

FLAVOR = 'm1.tiny'


class TestMinicloudNova(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        # filled by the helpers; checked after every other cleanup ran
        self.made = {'server': [], 'image': [], 'volume': [],
                     'volume snapshot': [], 'disk': []}
        self.addCleanup(self._assert_nothing_left)

    # ---- helpers ---------------------------------------------------------
    def _assert_nothing_left(self):
        left = []
        for resource, ids in self.made.items():
            if resource == 'disk':
                left += [p for p in ids if os.path.exists(p)]
                continue
            for ident in ids:
                p = self.openstack([*resource.split(), 'show', ident],
                                   fail_ok=True)
                if p:
                    left.append(f'{resource} {ident}')
        self.assertEqual([], left)

    def create_image(self, data):
        """A private raw image of the member holding `data`."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'image.raw')
            with open(path, 'wb') as f:
                f.write(data)
            image = self.openstack(
                ['image', 'create', '--disk-format', 'raw',
                 '--container-format', 'bare', '--file', path,
                 self.unique_name()], parse_output=True)
        self.made['image'].append(image['id'])
        self.addCleanup(self._delete_simple, 'image', image['id'],
                        base.MEMBER_CLOUD)
        return self.wait_for_status('image', image['id'], 'active')

    def create_server(self, *, image=None, volume=None):
        cmd = ['server', 'create', '--flavor', FLAVOR, '--nic', 'none',
               '--wait']
        cmd += ['--image', image] if image else ['--volume', volume]
        cmd.append(self.unique_name())
        server = self.openstack(cmd, parse_output=True)
        self.made['server'].append(server['id'])
        self.addCleanup(self.delete_server, server['id'])
        self.assertEqual('ACTIVE', server['status'])
        return server

    def delete_server(self, ident):
        self.openstack(['server', 'delete', '--wait', ident], fail_ok=True)
        self.wait_for_delete('server', ident)

    def server_image_create(self, server):
        image = self.openstack(
            ['server', 'image', 'create', '--wait', '--name',
             self.unique_name(), server], parse_output=True)
        self.made['image'].append(image['id'])
        self.addCleanup(self._delete_simple, 'image', image['id'],
                        base.MEMBER_CLOUD)
        self.assertEqual('active', image['status'])
        return image

    def server_disk(self, server):
        path = self.minicloud('server-disk', server).stdout.strip()
        self.made['disk'].append(path)
        return path

    def image_sha256(self, image):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'image')
            self.openstack(['image', 'save', '--file', out, image])
            return self.sha256_file(out)

    def wait_volume(self, volume, status):
        # `server add/remove volume` return before Cinder's status changes
        return self.wait_for_status('volume', volume, status)

    # ---- tests -------------------------------------------------------------
    def test_image_backed_server_disk_and_snapshot(self):
        data = os.urandom(base.MiB)
        image = self.create_image(data)
        server = self.create_server(image=image['id'])

        # the fake root disk holds the image's bytes
        path = self.server_disk(server['name'])
        self.assertEqual(server['id'] + '.disk', os.path.basename(path))
        self.assertEqual(self.sha256_file(path), image_digest(data))

        # known bytes in the "disk" come back in the snapshot image
        subprocess.run(
            ['dd', 'if=/dev/urandom', 'of=' + path, 'bs=64K', 'count=8',
             'seek=2', 'conv=notrunc', 'status=none'], check=True, timeout=60)
        digest = self.sha256_file(path)
        self.assertNotEqual(image_digest(data), digest)
        snap = self.server_image_create(server['id'])
        self.assertEqual(os.path.getsize(path), snap['size'])
        self.assertEqual('raw', snap['disk_format'])
        self.assertEqual('bare', snap['container_format'])
        props = snap['properties']
        self.assertEqual('snapshot', props['image_type'])
        self.assertEqual(server['id'], props['instance_uuid'])
        self.assertEqual(image['id'], props['base_image_ref'])
        self.assertEqual(digest, self.image_sha256(snap['id']))

        # deleting the server removes its disk file
        self.delete_server(server['id'])
        self.assertFalse(os.path.exists(path), path)

    def test_attach_volume_through_nova(self):
        vol = self.create_volume()
        self.made['volume'].append(vol['id'])
        image = self.create_image(os.urandom(64 * 1024))
        server = self.create_server(image=image['id'])

        self.openstack(['server', 'add', 'volume', server['id'], vol['id']])
        info = self.wait_volume(vol['id'], 'in-use')
        self.assertEqual([server['id']],
                         [a['server_id'] for a in info['attachments']])
        listed = self.openstack(['server', 'volume', 'list', server['id']],
                                parse_output=True)
        self.assertEqual([vol['id']], [v['Volume ID'] for v in listed])

        # Cinder lets only Nova (with its service token) end the
        # attachment of a server's volume
        p = subprocess.run(
            [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD,
             '--os-volume-api-version', '3.27', 'volume', 'attachment',
             'delete', listed[0]['Attachment ID']],
            env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=120)
        self.assertNotEqual(0, p.returncode)
        self.assertIn('ConflictNovaUsingAttachment', p.stderr)

        self.openstack(['server', 'remove', 'volume', server['id'],
                        vol['id']])
        info = self.wait_volume(vol['id'], 'available')
        self.assertEqual([], info['attachments'])

    def test_volume_backed_server_snapshot(self):
        vol = self.create_volume()
        self.made['volume'].append(vol['id'])
        self.openstack(['volume', 'set', '--bootable', vol['id']])
        digest = self.write_random(vol['id'], mib=2, offset_mib=0)
        server = self.create_server(volume=vol['id'])
        self.assertEqual('in-use',
                         self.openstack(['volume', 'show', vol['id']],
                                        parse_output=True)['status'])

        # no fake disk file: the root disk is the volume
        p = self.minicloud('server-disk', server['id'], check=False)
        self.assertNotEqual(0, p.returncode)
        self.assertIn('volume-backed', p.stderr)

        # Nova's API snapshots the volume in Cinder and makes an image
        # without data that maps the snapshot
        image = self.server_image_create(server['id'])
        self.assertEqual(0, image['size'])
        props = image['properties']
        bdm = json.loads(props['block_device_mapping'])
        self.assertEqual(1, len(bdm))
        self.assertEqual('snapshot', bdm[0]['source_type'])
        self.assertEqual(0, bdm[0]['boot_index'])
        snap_id = bdm[0]['snapshot_id']
        self.made['volume snapshot'].append(snap_id)
        # Nova leaves the snapshot to the owner: it outlives the image
        self.addCleanup(self._delete_simple, 'volume snapshot', snap_id,
                        base.MEMBER_CLOUD)
        snap = self.wait_for_status('volume snapshot', snap_id, 'available')
        self.assertEqual(vol['id'], snap['volume_id'])

        # the snapshot holds the volume's bytes
        copy = self.create_volume(snapshot=snap_id)
        self.made['volume'].append(copy['id'])
        self.assertEqual(digest, self.volume_sha256(copy['id']))


def image_digest(data):
    return hashlib.sha256(data).hexdigest()
