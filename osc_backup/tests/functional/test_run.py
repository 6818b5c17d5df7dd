"""``openstack backup run`` on the local real cloud.

Every test selects only its own volumes, by a metadata pair with a value
of its own (``--property osc-backup-ft-run=<unique>``), so the other
tests running in the same project are never touched.
"""

import json
import os
import re
import signal
import subprocess
import time

import fixtures

from osc_backup.tests.functional import base

KEY = 'osc-backup-ft-run'


class RunTestCase(base.FunctionalTestCase):
    def setUp(self):
        super().setUp()
        self.value = self.unique_name('sel')

    def volumes(self, count, *, mib=4, attach=()):
        """``count`` 1 GiB volumes with a few MiB of random data, selected
        by this test's property; attached when their index is in
        ``attach``."""
        made = []
        for index in range(count):
            vol = self.create_volume(1, name=self.unique_name('ft-run'))
            self.openstack(['volume', 'set', '--property',
                            f'{KEY}={self.value}', vol['id']])
            digest = self.write_random(vol['id'], mib=mib,
                                       offset_mib=1 + 97 * index)
            if index in attach:
                self.minicloud('attach', vol['id'])
            made.append(dict(vol, sha256=digest))
        return made

    def backup_run(self, *args, fmt=True):
        argv = ['backup', 'run', '--property', f'{KEY}={self.value}', *args]
        if fmt:
            argv += ['-f', 'json']
        return self.run_cli(argv)

    def interrupted(self, args, ready, what, *, interval=0.3,
                    may_finish=False):
        """``backup run`` of this test's selection with ``args`` (-f
        json), SIGINT to its process group once ``ready()`` holds (failing
        if it ends first, unless ``may_finish``, or ``what`` never comes):
        the finished ``CompletedProcess``."""
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                'run', '--property', f'{KEY}={self.value}', *args,
                '-f', 'json']
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        deadline = time.time() + base.WAIT_TIMEOUT
        while not ready():
            if may_finish and proc.poll() is not None:
                break
            self.assertIsNone(proc.poll(), 'finished before the signal')
            self.assertLess(time.time(), deadline, f'no {what}')
            time.sleep(interval)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=600)
        self.record(argv, proc.returncode, out, err)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def rows(self, p):
        rows = json.loads(p.stdout)
        for row in rows:
            for image_id in row.get('Backup') or []:
                self.addCleanup(self.delete_image_if_present, image_id)
        return {row['Resource']: row for row in rows}

    def leftovers(self, vols):
        """osc-backup temporaries (volumes, snapshots, images) of ``vols``,
        from any run."""
        return self.temporaries_of([v['name'] for v in vols])

    def test_parallel_one_failure_and_shards(self):
        vols = self.volumes(4)
        bad = vols[2]
        # a real reason: a volume in 'error' cannot be backed up
        self.openstack(['volume', 'set', '--state', 'error', bad['id']],
                       cloud=base.ADMIN_CLOUD)
        self.addCleanup(self.openstack, ['volume', 'set', '--state',
                                         'available', bad['id']],
                        cloud=base.ADMIN_CLOUD)
        ids = {v['id'] for v in vols}

        # two shards of the selection: disjoint, together all of it. One
        # of them may be empty (all four IDs in one shard: 1 run in 8),
        # which is a success with no row, as a cron host with nothing to
        # do must see it.
        shards = []
        for index in range(2):
            p = self.backup_run('--via-image', '--dry-run', '--shard',
                                f'{index}/2')
            self.assertEqual(0, p.returncode, p.stderr)
            rows = self.rows(p)
            for row in rows.values():
                self.assertEqual(('planned', 'image'),
                                 (row['Result'], row['Method']), row)
            shards.append(set(rows))
        self.assertEqual(set(), shards[0] & shards[1])
        self.assertEqual(ids, shards[0] | shards[1])
        self.assertEqual([], self.leftovers(vols))

        p = self.backup_run('--via-image', '--parallel', '4')
        self.assertEqual(1, p.returncode, p.stderr)
        rows = self.rows(p)
        self.assertEqual(ids, set(rows))
        self.assertEqual('failed', rows[bad['id']]['Result'])
        self.assertIn("'error'", rows[bad['id']]['Error'])
        self.assertEqual([], rows[bad['id']]['Backup'])
        for vol in vols:
            if vol is bad:
                continue
            row = rows[vol['id']]
            self.assertEqual('ok', row['Result'], row)
            self.assertEqual('image', row['Method'])
            [image_id] = row['Backup']
            image = self.openstack(['image', 'show', image_id],
                                   parse_output=True)
            self.assertEqual('active', image['status'])
            self.assertEqual(base.GiB, row['Bytes'])
            props = image.get('properties') or {}
            self.assertEqual(vol['id'],
                             props.get('osc_backup_source_volume_id'))
        self.assertIn('4 resource(s): 3 ok, 1 failed, 0 skipped',
                      p.stderr)
        self.assertEqual([], self.leftovers(vols))

    def test_then_prune_keeps_the_newest_and_download(self):
        [vol] = self.volumes(1, mib=8)
        first = self.rows(self.backup_run('--via-image'))
        [old] = first[vol['id']]['Backup']
        directory = self.useFixture(fixtures.TempDir()).path
        p = self.backup_run('--via-image', '--then-prune', '--keep-last',
                            '1', '--download', directory)
        self.assertEqual(0, p.returncode, p.stderr)
        row = self.rows(p)[vol['id']]
        [new] = row['Backup']
        self.assertEqual([old], row['Pruned'])
        self.wait_for_delete('image', old)
        self.assertEqual('active', self.openstack(
            ['image', 'show', new], parse_output=True)['status'])
        # the download: in the resource's own directory, the same bytes
        [sub] = os.listdir(directory)
        self.assertTrue(sub.startswith(f'volume-{vol["id"]}-'), sub)
        here = os.path.join(directory, sub)
        data = [f for f in os.listdir(here)
                if os.path.getsize(os.path.join(here, f)) == base.GiB]
        self.assertEqual(1, len(data), os.listdir(here))
        self.assertEqual(vol['sha256'],
                         self.sha256_file(os.path.join(here, data[0])))

    def test_sigint_cleans_up_and_exits_130(self):
        vols = self.volumes(2, attach=(0, 1))
        # a temporary volume of one of them exists: the run is in flight
        p = self.interrupted(
            ['--via-image', '--parallel', '2'],
            lambda: any(kind == 'volume' for kind, *_ in
                        self.leftovers(vols)),
            'temporary volume')
        out, err = p.stdout, p.stderr
        self.assertEqual(130, p.returncode, err)
        self.assertIn('SIGINT received: starting nothing more', err)
        self.assertIn('Interrupted by SIGINT.', err)
        rows = {r['Resource']: r for r in json.loads(out)}
        self.assertEqual({v['id'] for v in vols}, set(rows))
        for row in rows.values():
            for image_id in row['Backup']:
                self.addCleanup(self.delete_image_if_present, image_id)
            if row['Result'] == 'failed':
                self.assertIn('interrupted', row['Error'])
        self.assertIn('failed', {r['Result'] for r in rows.values()})
        self.assertEqual([], self.leftovers(vols))
        for vol in vols:
            self.assertEqual('in-use', self.openstack(
                ['volume', 'show', vol['id']], parse_output=True)['status'])

    def test_sigint_during_download_names_the_kept_image(self):
        [vol] = self.volumes(1, mib=64)
        directory = self.useFixture(fixtures.TempDir()).path

        def downloading():
            # the set is written in a hidden '.<data file>.partial'
            # directory of the resource's directory
            return any(
                n.endswith('.partial')
                for sub in os.listdir(directory)
                for n in os.listdir(os.path.join(directory, sub))
            )

        p = self.interrupted(['--via-image', '--download', directory],
                             downloading, 'download', interval=0.05,
                             may_finish=True)
        row = self.rows(p)[vol['id']]
        if p.returncode == 0 and row['Result'] == 'ok':
            # as test_image's interrupted downloads: a fast machine can
            # finish the 1 GiB before the signal lands
            self.skipTest('the download finished before SIGINT arrived')
        self.assertEqual(130, p.returncode, p.stderr)
        self.assertEqual('failed', row['Result'], row)
        [image_id] = row['Backup']
        self.assertIn('interrupted (SIGINT)', row['Error'])
        self.assertIn(f'The backup image {image_id} is active and complete',
                      row['Error'])
        self.assertEqual('active', self.openstack(
            ['image', 'show', image_id], parse_output=True)['status'])
        self.assertEqual([], self.leftovers([vol]))
        # the command the row gives finishes the download: the same bytes
        [sub] = os.listdir(directory)
        here = os.path.join(directory, sub)
        self.assertIn(f'backup image save --dir {here} {image_id}',
                      row['Error'])
        self.openstack(['backup', 'image', 'save', '--dir', here, image_id])
        data = [f for f in os.listdir(here)
                if os.path.getsize(os.path.join(here, f)) == base.GiB]
        self.assertEqual(1, len(data), os.listdir(here))
        self.assertEqual(vol['sha256'],
                         self.sha256_file(os.path.join(here, data[0])))

    def test_bad_input_exits_2_and_creates_nothing(self):
        name = self.unique_name('ft-run-missing')
        p = self.run_cli(['backup', 'run', '--volume', name, '--via-image'])
        self.assertEqual(2, p.returncode, p.stderr)
        self.assertEqual('', p.stdout)
        lines = p.stderr.strip().splitlines()
        self.assertEqual(1, len(lines), p.stderr)
        self.assertIn(name, lines[0])
        p = self.backup_run('--via-backup', '--download', '/tmp', fmt=False)
        self.assertEqual(2, p.returncode, p.stderr)
        self.assertEqual(1, len(p.stderr.strip().splitlines()), p.stderr)

    def test_container_and_keep_temporary(self):
        # an in-use volume: the image path goes through a temporary
        # snapshot and volume, which --keep-temporary keeps
        [vol] = self.volumes(1, attach=(0,))
        container = self.unique_name('ft-run-container')
        p = self.backup_run('--via-backup', '--container', container,
                            '--description', 'ft nightly')
        self.assertEqual(0, p.returncode, p.stderr)
        row = self.rows(p)[vol['id']]
        [backup_id] = row['Backup']
        self.addCleanup(self._delete_simple, 'volume backup', backup_id,
                        base.MEMBER_CLOUD)
        self.assertEqual(('ok', 'backup'), (row['Result'], row['Method']))
        backup = self.openstack(['volume', 'backup', 'show', backup_id],
                                parse_output=True)
        self.assertEqual(container, backup['container'])
        self.assertEqual('ft nightly', backup['description'])
        # --container cannot go with the image path: one line, exit 2
        p = self.backup_run('--via-image', '--container', container,
                            fmt=False)
        self.assertEqual(2, p.returncode, p.stderr)
        self.assertEqual(1, len(p.stderr.strip().splitlines()), p.stderr)
        self.assertIn('--container', p.stderr)

        p = self.backup_run('--via-image', '--keep-temporary')
        match = re.search(r'openstack backup cleanup --run-id (\S+)\)',
                          p.stderr)
        self.assertIsNotNone(match, p.stderr)
        run_id = match.group(1)
        # also when the test fails below: the temporaries go first
        self.addCleanup(self.run_cli, ['backup', 'cleanup', '--run-id',
                                       run_id], quiet=True)
        self.assertEqual(0, p.returncode, p.stderr)
        row = self.rows(p)[vol['id']]
        self.assertEqual(('ok', 'image'), (row['Result'], row['Method']))
        self.assertIn('Kept temporary resources', p.stderr)
        kept = self.temporaries(run_id)
        self.assertEqual({'volume', 'volume snapshot'},
                         {kind for kind, _name, _status in kept}, kept)
        for kind, name, _status in kept:
            ident = self.openstack([*kind.split(), 'show', name],
                                   parse_output=True)['id']
            # each is named with its removal command
            self.assertIn(f'openstack {kind} delete {ident}', p.stderr)
        removed = self.openstack(['backup', 'cleanup', '--run-id', run_id],
                                 parse_output=True)
        self.assertTrue(removed)
        self.assertTrue(all(r['Result'] == 'deleted' for r in removed),
                        removed)
        self.assertEqual([], self.temporaries(run_id))
        self.assertEqual([], self.leftovers([vol]))
        self.assertEqual('in-use', self.openstack(
            ['volume', 'show', vol['id']], parse_output=True)['status'])
