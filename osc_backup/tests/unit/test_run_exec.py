"""Running ``backup run``: workers, failures, prune, signals."""

import io
import os
import signal
import threading
import time
import zoneinfo
from unittest import mock

import fixtures

from osc_backup.common import cleanup
from osc_backup.common import errors
from osc_backup.common import retention
from osc_backup.common import waits
from osc_backup.common.progress import Reporter
from osc_backup.procedures import catalog
from osc_backup.procedures import image_save
from osc_backup.procedures import run_exec
from osc_backup.procedures import run_plan
from osc_backup.procedures import volume_choice
from osc_backup.procedures import volume_image
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes


def target(name, zone='nova', **attrs):
    vol = fakes.volume(name=name, availability_zone=zone, **attrs)
    return run_plan.Target(
        run_plan.VOLUME, vol,
        choice=volume_choice.Choice(volume_choice.IMAGE, 'requested'),
    )


def image_result(vol_id, size=2 * 1024 ** 2):
    return {
        'method': 'image', 'image_id': f'img-{vol_id}', 'size': size,
        'method_reason': 'requested with --via-image',
    }


class RunBase(base.TestCase):
    """execute() with the volume procedure mocked."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.reporter = Reporter(stream=io.StringIO(), progress=False)
        self.err = self.reporter.stream
        self.conns = []
        self.volumes = {}
        self.backup = self.useFixture(fixtures.MockPatchObject(
            volume_choice, 'backup_volume'
        )).mock

    def connect(self, _conn):
        """Each worker slot's own connection."""
        conn = mock.Mock()
        conn.block_storage.get_volume.side_effect = (
            lambda vid: self.volumes[vid]
        )
        self.conns.append(conn)
        return conn

    def targets(self, *names):
        made = [target(n) for n in names]
        for t in made:
            self.volumes[t.id] = t.resource
        return made

    def execute(self, targets, **opts):
        opts.setdefault('method', volume_choice.IMAGE)
        return run_exec.execute(
            mock.Mock(), targets, run_exec.Options(**opts),
            reporter=self.reporter, connect=self.connect,
        )


class Run(RunBase):
    def test_all_ok(self):
        targets = self.targets('a', 'b', 'c')
        self.backup.side_effect = (
            lambda conn, vol, *a, **kw: image_result(vol.id)
        )
        report = self.execute(targets)
        self.assertEqual(['ok'] * 3, [r.result for r in report.results])
        self.assertEqual([t.id for t in targets],
                         [r.resource for r in report.results])
        self.assertEqual([f'img-{t.id}' for t in targets],
                         [r.backups[0] for r in report.results])
        self.assertEqual(2 * 1024 ** 2, report.results[0].size_bytes)
        self.assertEqual('image', report.results[0].method)
        self.assertEqual(0, report.exit_code())
        self.assertIsNone(report.interrupted)
        # each call had its own run ID
        runs = {c.kwargs['run'].run_id for c in self.backup.call_args_list}
        self.assertEqual(3, len(runs))

    def test_parallelism_is_bounded_and_reached(self):
        targets = self.targets(*'abcdefg')
        lock = threading.Lock()
        now = [0]
        peak = [0]
        conns_in_use = []

        def slow(conn, vol, *a, **kw):
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
                self.assertNotIn(conn, conns_in_use)
                conns_in_use.append(conn)
            time.sleep(0.15)
            with lock:
                now[0] -= 1
                conns_in_use.remove(conn)
            return image_result(vol.id)

        self.backup.side_effect = slow
        report = self.execute(targets, parallel=3)
        self.assertEqual(3, peak[0])
        self.assertEqual(3, len(self.conns))  # one per worker slot
        self.assertEqual(['ok'] * 7, [r.result for r in report.results])

    def test_one_failure_does_not_stop_the_others(self):
        targets = self.targets('a', 'bad', 'c', 'd')

        def backup(conn, vol, *a, **kw):
            if vol.name == 'bad':
                raise errors.WaitError(
                    "Step 'upload' failed: volume went to 'error'\n"
                    'Cleanup could not remove x. Remove them with:\n'
                    '  openstack volume delete x'
                )
            return image_result(vol.id)

        self.backup.side_effect = backup
        report = self.execute(targets, parallel=2)
        self.assertEqual(['ok', 'failed', 'ok', 'ok'],
                         [r.result for r in report.results])
        self.assertIn("Step 'upload' failed", report.results[1].error)
        self.assertNotIn('\n', report.results[1].error)
        # the whole message, removal commands included, on stderr
        self.assertIn('openstack volume delete x', self.err.getvalue())
        self.assertEqual(1, report.exit_code())
        self.assertEqual(3, report.summary().ok)

    def test_unexpected_error_is_a_failed_row(self):
        targets = self.targets('a', 'b')
        self.backup.side_effect = [RuntimeError('boom'),
                                   image_result(targets[1].id)]
        report = self.execute(targets, parallel=1)
        self.assertEqual(['failed', 'ok'],
                         [r.result for r in report.results])
        self.assertEqual('boom', report.results[0].error)

    def test_volume_is_read_again_before_its_backup(self):
        [t] = self.targets('a')
        fresh = fakes.volume(id=t.id, name='a', status='in-use')
        self.volumes[t.id] = fresh
        self.backup.return_value = image_result(t.id)
        self.execute([t])
        self.assertIs(fresh, self.backup.call_args.args[1])

    def test_cinder_backup_size_is_gib(self):
        [t] = self.targets('a')
        self.backup.return_value = {
            'method': 'backup', 'backup_id': 'b1', 'size': 2,
        }
        report = self.execute([t], method='backup')
        self.assertEqual(2 * 1024 ** 3, report.results[0].size_bytes)
        self.assertEqual(['b1'], report.results[0].backups)

    def test_download_gets_one_directory_per_resource(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        [t] = self.targets('../../etc\nx')
        self.backup.return_value = image_result(t.id)
        self.execute([t], download=tmp)
        image_opts = self.backup.call_args.args[3]
        self.assertEqual(tmp, os.path.dirname(image_opts.download))
        name = os.path.basename(image_opts.download)
        self.assertTrue(name.startswith(f'volume-{t.id}-'))
        self.assertNotIn('/', name)
        self.assertNotIn('\n', name)
        self.assertTrue(os.path.isdir(image_opts.download))
        self.assertEqual(0o700, os.stat(image_opts.download).st_mode & 0o777)

    def test_download_directory_that_is_a_link_fails_that_resource(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        [t] = self.targets('a')
        os.symlink('/tmp', os.path.join(tmp, f'volume-{t.id}-a'))
        report = self.execute([t], download=tmp)
        self.assertEqual('failed', report.results[0].result)
        self.assertIn('not a directory', report.results[0].error)
        self.backup.assert_not_called()

    def test_unconfirmed_choice_is_tried_once_at_a_time(self):
        targets = self.targets('a', 'b', 'c')
        shared = volume_choice.Choice(
            volume_choice.BACKUP, 'tried', confirmed=False
        )
        for t in targets:
            t.choice = shared
        calls = []

        def backup(conn, vol, choice, *a, **kw):
            calls.append((vol.name, choice.confirmed))
            time.sleep(0.05)
            # the first one learns that Cinder has no backup service
            choice.method = volume_choice.IMAGE
            return image_result(vol.id)

        self.backup.side_effect = backup
        self.execute(targets, method='auto', parallel=3)
        self.assertEqual(1, sum(1 for _n, c in calls if not c))
        self.assertTrue(shared.confirmed)


class PerResourceOptions(RunBase):
    """--container, --description, --keep-temporary reach the single
    verbs' procedure options."""

    def test_volume_gets_them(self):
        [t] = self.targets('a')
        self.backup.return_value = image_result(t.id)
        self.execute([t], method='auto', container='c1', description='d1',
                     keep_temporary=True)
        image_opts, backup_opts = self.backup.call_args.args[3:5]
        self.assertEqual('c1', backup_opts.container)
        self.assertEqual('d1', backup_opts.description)
        self.assertEqual('d1', image_opts.description)
        self.assertTrue(image_opts.keep_temporary)

    def test_defaults_change_nothing(self):
        [t] = self.targets('a')
        self.backup.return_value = image_result(t.id)
        self.execute([t])
        image_opts, backup_opts = self.backup.call_args.args[3:5]
        self.assertIsNone(backup_opts.container)
        self.assertIsNone(image_opts.description)
        self.assertFalse(image_opts.keep_temporary)

    def test_server_gets_them(self):
        server = mock.Mock(id='s1', availability_zone='nova')
        server.name = 's'
        t = run_plan.Target(run_plan.SERVER, server)
        prepare = self.useFixture(fixtures.MockPatchObject(
            run_exec.server_plan, 'prepare')).mock
        prepare.return_value.disks = []
        self.useFixture(fixtures.MockPatchObject(
            run_exec.server_backup, 'backup_server',
            return_value={'artifacts': [
                {'id': 'b1', 'method': 'backup'}]}))
        report = self.execute([t], method='backup', container='c1',
                              description='d1', keep_temporary=True)
        self.assertEqual('ok', report.results[0].result)
        sopts = prepare.call_args.args[2]
        self.assertEqual(('c1', 'd1', True),
                         (sopts.container, sopts.description,
                          sopts.keep_temporary))

    def test_describe(self):
        self.assertEqual([], run_exec.Options().describe())
        lines = run_exec.Options(
            container='c1', description='d\x1b1', keep_temporary=True,
            prune=retention.Policy(last=1), prune_group_by=('source',),
        ).describe()
        text = '\n'.join(lines)
        self.assertIn('container: c1', text)
        self.assertNotIn('\x1b', text)
        self.assertIn('kept', text)
        self.assertIn("grouped by 'source'", text)


class Prune(RunBase):
    """--then-prune: only sources whose backup is ok, only their own."""

    def setUp(self):
        super().setUp()
        self.cat = catalog.Catalog()
        self.useFixture(fixtures.MockPatchObject(
            catalog, 'load', return_value=self.cat))
        self.select = self.useFixture(fixtures.MockPatchObject(
            catalog, 'select', side_effect=lambda cat, f: [f])).mock
        self.units = {}

        def plan(cat, selected, policy, **kw):
            source = next(iter(selected[0].sources))
            return catalog.PrunePlan(
                decisions=[], units={}, order=self.units.get(source, []),
            )

        self.useFixture(fixtures.MockPatchObject(
            catalog, 'plan_prune', side_effect=plan))
        self.delete = self.useFixture(fixtures.MockPatchObject(
            catalog, 'delete_units', side_effect=lambda conn, order, rep,
            **kw: [catalog.Outcome(u, 'deleted') for u in order])).mock

    def unit(self, uid, source):
        return catalog.Unit(
            id=uid, kind='volume-image', source_id=source, source_name='',
            created=None, parts=[],
        )

    def test_only_ok_sources_are_pruned(self):
        targets = self.targets('a', 'bad', 'c')
        a, bad, c = (t.id for t in targets)
        self.units = {
            a: [self.unit('old-a', a),
                # a server run holding this volume: not a's to prune
                self.unit('run-1', 'server-1')],
            bad: [self.unit('old-bad', bad)],
            c: [],
        }

        def backup(conn, vol, *args, **kw):
            if vol.name == 'bad':
                raise errors.BackupError('no')
            return image_result(vol.id)

        self.backup.side_effect = backup
        report = self.execute(
            targets, prune=retention.Policy(last=1), parallel=1
        )
        pruned_sources = [
            next(iter(c.args[1].sources)) for c in self.select.call_args_list
        ]
        self.assertEqual([a, c], pruned_sources)
        self.assertEqual(['old-a'], report.results[0].pruned)
        deleted = [u.id for c in self.delete.call_args_list for u in c.args[1]]
        self.assertEqual(['old-a'], deleted)
        self.assertEqual(1, report.exit_code())

    def test_prune_failure_makes_the_run_fail(self):
        [t] = self.targets('a')
        self.units = {t.id: [self.unit('old', t.id)]}
        self.delete.side_effect = lambda conn, order, rep, **kw: [
            catalog.Outcome(u, 'failed: HTTP 409', failed=True)
            for u in order
        ]
        self.backup.return_value = image_result(t.id)
        report = self.execute([t], prune=retention.Policy(last=1))
        self.assertEqual('ok', report.results[0].result)
        self.assertIn('HTTP 409', report.results[0].prune_error)
        self.assertEqual(1, report.exit_code())

    def test_group_by_and_time_zone_reach_the_plan(self):
        [t] = self.targets('a')
        self.backup.return_value = image_result(t.id)
        zone = zoneinfo.ZoneInfo('Australia/Sydney')
        self.execute([t], prune=retention.Policy(daily=1),
                     prune_group_by=('source',), prune_tz=zone)
        kw = catalog.plan_prune.call_args.kwargs
        self.assertEqual(('source',), kw['group_by'])
        self.assertIs(zone, kw['tz'])

    def test_no_prune_without_the_option(self):
        [t] = self.targets('a')
        self.backup.return_value = image_result(t.id)
        report = self.execute([t])
        self.select.assert_not_called()
        self.assertEqual(0, report.exit_code())


class Check(base.TestCase):
    def test_bad_mixes(self):
        for opts, text in (
            (dict(parallel=0), '--parallel'),
            (dict(download='.', incremental=True), 'cannot be combined'),
            (dict(method='backup', download='.'), '--via-backup'),
            (dict(method='image', incremental=True), '--incremental'),
            (dict(download='/nonexistent/dir'), 'does not exist'),
            (dict(prune=retention.Policy()), 'retention rule'),
            (dict(method='image', container='c'),
             '--container only applies to the Cinder backup path'),
            (dict(method='image', container='c', incremental=True),
             '--incremental, --container only apply'),
            (dict(download='.', container='c'), 'cannot be combined'),
            (dict(container=' '), '--container must not be empty'),
            (dict(prune_group_by=('source',)), 'need --then-prune'),
            (dict(prune_tz=zoneinfo.ZoneInfo('Europe/Paris')),
             'need --then-prune'),
            (dict(prune=retention.Policy(last=1), prune_group_by=('kind',)),
             'each source on its own'),
        ):
            exc = self.assertRaises(
                errors.InvalidInput, run_exec.check, run_exec.Options(**opts)
            )
            self.assertIn(text, str(exc))


class Interrupt(RunBase):
    """Signals reach the main thread; workers stop at their next poll and
    clean up with their own stacks."""

    def setUp(self):
        super().setUp()
        self.undone = []
        self.started = threading.Event()
        self.bs, _ = fakes.make_proxies()
        self.cloud = self.useFixture(fakes.CloudStatuses(self.bs))
        self.before = signal.getsignal(signal.SIGINT)

    def tearDown(self):
        super().tearDown()
        self.assertEqual(self.before, signal.getsignal(signal.SIGINT))

    def _worker(self, conn, vol, *a, reporter, **kw):
        """A backup that creates a temporary, then waits for ever."""
        stack = cleanup.Cleanup(reporter)
        with stack.guard():
            stack.add(
                f'delete temporary of {vol.id}',
                lambda: self.undone.append(vol.id),
                leftover=f'volume tmp-{vol.id}',
                remove_command=['openstack', 'volume', 'delete', vol.id],
            )
            self._stuck()

    def _stuck(self):
        """Say the work started, then wait for ever (until a signal)."""
        self.started.set()
        stuck = fakes.volume(status='creating')
        self.cloud.timeline(stuck, 'creating')
        waits.wait_for_status(
            self.bs, stuck, 'available', kind='volume',
            step='create temporary volume', timeout=600, interval=0.05,
        )

    def _kill_when_started(self, sig, count=2):
        def kill():
            for _ in range(count):
                self.started.wait(10)
            time.sleep(0.2)
            os.kill(os.getpid(), sig)

        threading.Thread(target=kill, daemon=True).start()

    def _check(self, sig, code):
        targets = self.targets('a', 'b', 'c', 'd')
        self.backup.side_effect = self._worker
        self._kill_when_started(sig)
        started = time.monotonic()
        report = self.execute(targets, parallel=2)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(sig.name, report.interrupted)
        self.assertEqual(code, report.exit_code())
        results = [r.result for r in report.results]
        self.assertEqual(['failed', 'failed', 'skipped', 'skipped'], results)
        self.assertIn('interrupted', report.results[0].error)
        self.assertIn('not started', report.results[2].error)
        # each worker undid its own temporary
        self.assertCountEqual([t.id for t in targets[:2]], self.undone)
        self.assertIn(f'{sig.name} received: starting nothing more',
                      self.err.getvalue())

    def test_sigint(self):
        self._check(signal.SIGINT, 130)

    def test_sigterm(self):
        self._check(signal.SIGTERM, 143)

    def test_second_signal_stops_the_cleanups_waits(self):
        targets = self.targets('a')
        stuck = fakes.volume(status='deleting')
        self.cloud.timeline(stuck, 'deleting')

        def worker(conn, vol, *a, reporter, **kw):
            stack = cleanup.Cleanup(reporter, run_id='0123456789ab')
            with stack.guard():
                stack.add(
                    'delete temporary volume',
                    lambda: waits.wait_for_delete(
                        self.bs, stuck, kind='volume', step='delete',
                        timeout=600, interval=0.05,
                    ),
                    leftover=f'volume {stuck.id}',
                    remove_command=['openstack', 'volume', 'delete',
                                    stuck.id],
                )
                self.started.set()
                waits.wait_for_status(
                    self.bs, fakes.volume(status='creating'), 'available',
                    kind='volume', step='x', timeout=600, interval=0.05,
                )

        self.backup.side_effect = worker

        def kill():
            self.started.wait(10)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the cleanup now waits for the deletion
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=kill, daemon=True).start()
        started = time.monotonic()
        report = self.execute(targets)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(130, report.exit_code())
        self.assertEqual('failed', report.results[0].result)
        err = self.err.getvalue()
        self.assertIn('SIGINT received again: stopped waiting', err)
        self.assertIn(f'openstack volume delete {stuck.id}', err)

    def test_finished_rows_are_kept(self):
        targets = self.targets('done', 'stuck')

        def backup(conn, vol, *a, reporter, **kw):
            if vol.name == 'done':
                return image_result(vol.id)
            return self._worker(conn, vol, reporter=reporter)

        self.backup.side_effect = backup
        self._kill_when_started(signal.SIGINT, count=1)
        report = self.execute(targets, parallel=2)
        self.assertEqual(['ok', 'failed'],
                         [r.result for r in report.results])
        self.assertEqual(130, report.exit_code())

    def test_interrupted_download_names_the_kept_image(self):
        # the image is active and complete; its download is interrupted:
        # the row names the image (Backup) and how to finish (Error)
        [t] = self.targets('a')
        directory = self.useFixture(fixtures.TempDir()).path

        def save_image(conn, image_id, directory, **kw):
            self._stuck()

        def backup(conn, vol, choice, image_opts, *a, reporter, **kw):
            volume_image.download_image(
                conn, f'img-{vol.id}', image_opts.download, reporter
            )

        self.backup.side_effect = backup
        self._kill_when_started(signal.SIGINT, count=1)
        with mock.patch.object(image_save, 'save_image', save_image):
            report = self.execute([t], download=directory)
        [row] = report.results
        self.assertEqual('failed', row.result)
        self.assertEqual([f"img-{t.id}"], row.backups, row.error + self.err.getvalue())
        self.assertIn('interrupted (SIGINT)', row.error)
        self.assertIn(f'The backup image img-{t.id} is active and complete',
                      row.error)
        self.assertIn('openstack backup image save --dir', row.error)
        self.assertNotIn('\n', row.error)
        self.assertEqual(130, report.exit_code())
        # and on stderr, as the single verb says it
        self.assertIn(f'img-{t.id} is active and complete (kept)',
                      self.err.getvalue())

    def test_no_prune_after_an_interrupt(self):
        [t] = self.targets('a')
        self.backup.side_effect = self._worker
        self._kill_when_started(signal.SIGINT, count=1)
        with mock.patch.object(run_exec, 'prune_sources') as prune:
            self.execute([t], prune=retention.Policy(last=1))
        prune.assert_not_called()


class Cancellation(base.TestCase):
    """The waits' side (common/waits.py)."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(30, gentle=True))
        self.bs, _ = fakes.make_proxies()
        self.cloud = self.useFixture(fakes.CloudStatuses(self.bs))

    def _stuck(self):
        vol = fakes.volume(status='creating')
        self.cloud.timeline(vol, 'creating')
        return vol

    def _wait(self, interval=None):
        waits.wait_for_status(
            self.bs, self._stuck(), 'available', kind='volume', step='s',
            timeout=600, interval=interval,
        )

    def test_a_wait_ends_within_a_poll(self):
        for interval in (None, 1.0):
            token = waits.Cancellation()
            threading.Timer(0.3, token.cancel, ('SIGTERM',)).start()
            started = time.monotonic()
            with waits.cancellable(token):
                exc = self.assertRaises(errors.Interrupted, self._wait,
                                        interval)
            self.assertLess(time.monotonic() - started, 3)
            self.assertEqual('SIGTERM', exc.signame)

    def test_shielded_waits_go_on_until_the_second_signal(self):
        token = waits.Cancellation()
        token.cancel('SIGINT')
        vol = fakes.volume(status='creating')
        self.cloud.timeline(vol, 'creating', 'creating', 'available')
        with waits.cancellable(token), waits.shielded():
            waits.wait_for_status(
                self.bs, vol, 'available', kind='volume', step='s',
                timeout=60, interval=0.05,
            )
            threading.Timer(0.2, token.stop_waiting, ('SIGINT',)).start()
            self.assertRaises(errors.Interrupted, self._wait, 0.05)

    def test_without_a_cancellation_nothing_changes(self):
        waits.check_cancelled()
        self.assertFalse(waits.cancelled())
