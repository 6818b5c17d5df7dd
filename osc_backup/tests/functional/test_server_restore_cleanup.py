"""A `backup server restore` interrupted or killed, on the local real
cloud (with Nova).

Until the restored server is ACTIVE with every volume attached, the
server, its volumes and uploaded images have the restore's temporary
names (`osc-backup-tmp-<run>-...`); the server is created as
`osc-backup-tmp-<run>-restore-of-<name>`, so its run ID is read from the
server list while the restore runs. SIGINT removes everything the restore
made (exit 130); after SIGKILL, `openstack backup cleanup --run-id <run>`
does -- the server first -- and never a server of the user's that only
looks like one.
"""

import json
import re
import signal
import subprocess
import time


from osc_backup.tests.functional import base
from osc_backup.tests.functional.test_server_restore import (
    ServerRestoreTestBase,
)


class ServerRestoreCleanupTestCase(ServerRestoreTestBase):
    def setUp(self):
        super().setUp()
        self.conn = self.connect()

    # ---- helpers ------------------------------------------------------
    def backed_up(self, volume_mib=0):
        """An image-booted server with a volume (`volume_mib` more MiB
        written to it), backed up: the run ID."""
        server, _disk_sha, [(vol, _sha)] = self.image_booted(volumes=1)
        if volume_mib:
            self.write_random(vol['id'], mib=volume_mib)
        made, _err = self.backup_json(server['id'], '--via-image')
        return made['run_id']

    def start_restore(self, run_id, name):
        """`backup server restore run_id --name name`, started: (process,
        argv)."""
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                'server', 'restore', run_id, '--nic', 'none', '--name', name]
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(self._reap, proc)
        return proc, argv

    def restore_run_seen(self, proc, argv, kind, name):
        """The run ID of the restore `proc` of `name`, once a `kind`
        ('server' or 'volume') with its temporary name exists; polled with
        the SDK every 0.2 s (the server is seen between its creation and
        its rename)."""
        temporary = re.compile(
            rf'^osc-backup-tmp-([0-9a-f]{{12}})-restore-of-{re.escape(name)}')
        listing = (self.conn.compute.servers if kind == 'server'
                   else self.conn.block_storage.volumes)
        deadline = time.time() + base.WAIT_TIMEOUT
        while True:
            for res in listing():
                match = temporary.match(res.name or '')
                if match:
                    return match[1]
            if proc.poll() is not None:
                self.finished(proc, argv)
                self.fail(f'the restore ended before its temporary {kind} '
                          'was seen')
            self.assertLess(time.time(), deadline, f'no temporary {kind}')
            time.sleep(0.2)

    def finished(self, proc, argv, timeout=600):
        out, err = proc.communicate(timeout=timeout)
        self.record(argv, proc.returncode, out, err)
        return err

    def _reap(self, proc):
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    def made_by(self, run_id, name):
        """[(kind, name, status)] of what the restore `run_id` of `name`
        made that is still there (in any status): its temporary names, or
        `name` in the final ones."""
        prefix = f'{base.TEMPORARY_PREFIX}{run_id}-'

        def ours(res_name):
            return (res_name or '').startswith(prefix) or name in (
                res_name or '')

        project = self.conn.current_project_id
        found = [('server', s.name, s.status)
                 for s in self.conn.compute.servers() if ours(s.name)]
        found += [('volume', v.name, v.status)
                  for v in self.conn.block_storage.volumes() if ours(v.name)]
        found += [('image', i.name, i.status)
                  for i in self.conn.image.images()
                  if ours(i.name) and i.owner == project]
        return found

    # ---- tests ----------------------------------------------------------
    def test_sigint_once_the_server_exists_leaves_nothing_exit_130(self):
        name = self.unique_name('osc-backup-ft-rint')
        proc, argv = self.start_restore(self.backed_up(), name)
        run_id = self.restore_run_seen(proc, argv, 'server', name)
        proc.send_signal(signal.SIGINT)
        err = self.finished(proc, argv)
        self.assertEqual(130, proc.returncode, err)
        self.assertIn('removing what this run created', err)
        self.assertEqual([], self.made_by(run_id, name), err)

    def test_sigkill_then_cleanup_run_id_removes_everything(self):
        name = self.unique_name('osc-backup-ft-rkill')
        proc, argv = self.start_restore(self.backed_up(), name)
        run_id = self.restore_run_seen(proc, argv, 'server', name)
        proc.kill()  # SIGKILL: no cleanup can run
        self.finished(proc, argv, timeout=60)
        left = self.made_by(run_id, name)
        # the server and its volume, all with their temporary names
        self.assertEqual(['server', 'volume'],
                         sorted({kind for kind, _n, _s in left}), left)
        for _kind, res_name, _status in left:
            self.assertTrue(res_name.startswith(
                f'{base.TEMPORARY_PREFIX}{run_id}-'), left)
        # a server of the user's named like the restore's, without its
        # metadata: never touched
        image = self.conn.compute.get_server(
            next(s.id for s in self.conn.compute.servers()
                 if s.name == f'{base.TEMPORARY_PREFIX}{run_id}-restore-of-'
                 f'{name}')).image['id']
        mine = self.create_server(
            image=image,
            name=f'{base.TEMPORARY_PREFIX}{run_id}-restore-of-{name}-mine')

        p = self.run_cli(['backup', 'cleanup', '--run-id', run_id,
                          '--dry-run', '-f', 'json'])
        self.assertEqual(0, p.returncode, p.stderr)
        planned = json.loads(p.stdout)
        self.assertEqual('server', planned[0]['Kind'], planned)
        self.assertEqual({'would delete'}, {r['Result'] for r in planned})
        self.assertNotIn(mine['id'], [r['ID'] for r in planned])

        p = self.run_cli(['backup', 'cleanup', '--run-id', run_id,
                          '-f', 'json'])
        self.assertEqual(0, p.returncode, p.stderr)
        rows = json.loads(p.stdout)
        self.assertEqual([r['ID'] for r in planned], [r['ID'] for r in rows])
        self.assertEqual({'deleted'}, {r['Result'] for r in rows})
        left = self.made_by(run_id, name)
        self.assertEqual([('server', mine['name'])],
                         [(kind, n) for kind, n, _s in left], left)

    def test_sigint_while_a_volume_is_restored_leaves_nothing(self):
        name = self.unique_name('osc-backup-ft-int')
        proc, argv = self.start_restore(self.backed_up(volume_mib=200), name)
        # interrupted once a restored volume exists (while it is restored
        # under its temporary name, or after)
        run_id = self.restore_run_seen(proc, argv, 'volume', name)
        proc.send_signal(signal.SIGINT)
        err = self.finished(proc, argv)
        self.assertEqual(130, proc.returncode, err)
        self.assertEqual([], self.made_by(run_id, name), err)
