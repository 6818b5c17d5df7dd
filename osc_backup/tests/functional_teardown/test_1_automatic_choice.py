"""The automatic choice of `backup volume create` with cinder-backup
stopped: disturbs the cloud, so it runs in the serial suite, after the
parallel functional tests and before the `down` check."""

import re
import subprocess
import time

from osc_backup.tests.functional import base
from osc_backup.tests.functional.test_volume_backup import VolumeBackupTestCase


class TestAutomaticChoice(VolumeBackupTestCase):
    """Stops cinder-backup for about a minute (Cinder needs up to
    service_down_time, 60 s, to see it down), and always starts it again.

    The stopped phase runs as admin: Cinder 29's scheduler picks backup
    hosts from the capabilities the backup services last reported and never
    drops a stopped one, so a member's backup attempt would wait in
    'creating' (volume 'backing-up') until the service returns instead of
    being rejected. Only the services API sees the service down; the
    member's try ends after a minute with an error that says so, and the
    service, started again, marks that backup error and releases the
    volume.
    """

    def backup_services(self):
        return self.openstack(
            ['volume', 'service', 'list', '--service', 'cinder-backup'],
            cloud=base.ADMIN_CLOUD, parse_output=True,
        )

    def wait_backup_state(self, state, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            rows = self.backup_services()
            if rows and all(r['State'] == state for r in rows):
                return
            time.sleep(2)
        self.fail(f'cinder-backup not {state} after {timeout}s')

    def admin_sha256(self, volume):
        path = self.minicloud(
            'volume-path', '--cloud', base.ADMIN_CLOUD, volume
        ).stdout.strip()
        return base.sha256_file(path, length=base.GiB)

    def test_backup_while_running_image_while_stopped(self):
        vol = self.create_volume(1)  # the member's; admin works by ID
        h0 = self.write_random(vol['id'], mib=2, offset_mib=3)

        running = self.backup(vol['id'])  # member, service running
        self.assertEqual('backup', running['method'])
        admin = self.backup(vol['id'], cloud=base.ADMIN_CLOUD)
        self.assertEqual('backup', admin['method'])
        self.assertIn('services API', admin['method_reason'])

        try:
            self.minicloud('stop', 'cinder-backup')
            self.wait_backup_state('down')
            stopped = self.backup(vol['id'], cloud=base.ADMIN_CLOUD)
            # a member cannot see that: its try is sent to the dead service
            began = time.monotonic()
            member = subprocess.run(
                [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                 'volume', 'create', vol['id']],
                env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=600)
            took = time.monotonic() - began
        finally:
            self.minicloud('start', 'cinder-backup')
        self.assertEqual(1, member.returncode, member.stderr)
        self.assertIn('No Cinder backup service has taken backup',
                      member.stderr)
        self.assertIn(f"volume {vol['id']} backing-up", member.stderr)
        self.assertLess(took, 150)
        stuck = re.search(r'taken backup (\S+) in', member.stderr).group(1)
        self.addCleanup(self._delete_backup, stuck)
        self.assertIn(f'openstack volume backup delete {stuck}',
                      member.stderr)
        # as the message says: the service, started again, marks the backup
        # error and releases the volume (cleanup deletes the backup)
        self.wait_for_status('volume backup', stuck, 'error',
                             failures=('available',))
        self.wait_for_status('volume', vol['id'], 'available')
        self.assertEqual('image', stopped['method'])
        self.assertIn('services API', stopped['method_reason'])
        self.assertIn('no enabled cinder-backup service is up',
                      stopped['method_reason'])
        self.wait_backup_state('up')

        # both kinds of backup restore byte for byte
        out = self.openstack(
            ['backup', 'volume', 'restore', stopped['image_id']],
            cloud=base.ADMIN_CLOUD, parse_output=True,
        )
        self.addCleanup(self._delete_volume, out['volume_id'],
                        base.ADMIN_CLOUD)
        self.assertEqual('image', out['source_kind'])
        self.assertEqual('file', out['volume_type'])
        self.assertFalse(out['bootable'])
        self.assertEqual(h0, self.admin_sha256(out['volume_id']))
        out = self.openstack(
            ['backup', 'volume', 'restore', admin['backup_id']],
            cloud=base.ADMIN_CLOUD, parse_output=True,
        )
        self.addCleanup(self._delete_volume, out['volume_id'],
                        base.ADMIN_CLOUD)
        self.assertEqual(h0, self.admin_sha256(out['volume_id']))
