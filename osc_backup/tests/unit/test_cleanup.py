import io
import os
import shlex
import signal
import threading
import time
from unittest import mock

import fixtures

from osc_backup.common import cleanup as _cleanup
from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.progress import Reporter
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes


class TestCleanup(base.TestCase):
    def setUp(self):
        super().setUp()
        # a wait that is not bounded fails the test instead of hanging it
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)
        self.calls = []

    def _add(self, c, name, when=_cleanup.TEMPORARY, fail=False):
        def action():
            self.calls.append(name)
            if fail:
                raise RuntimeError(f'{name} failed')

        c.add(
            f'delete {name}', action, leftover=f'volume {name}',
            remove_command=f'openstack volume delete {name}', when=when,
        )

    def test_success_runs_temporaries_lifo_not_partials(self):
        c = _cleanup.Cleanup(self.reporter)
        with c.guard():
            self._add(c, 'snap')
            self._add(c, 'vol')
            self._add(c, 'image', when=_cleanup.PARTIAL)
        self.assertEqual(['vol', 'snap'], self.calls)

    def test_failure_runs_everything_and_reraises(self):
        c = _cleanup.Cleanup(self.reporter)

        def body():
            with c.guard():
                self._add(c, 'snap')
                self._add(c, 'image', when=_cleanup.PARTIAL)
                raise errors.WaitError('upload failed')

        self.assertRaises(errors.WaitError, body)
        self.assertEqual(['image', 'snap'], self.calls)

    def test_cleanup_failure_after_success_names_leftovers(self):
        c = _cleanup.Cleanup(self.reporter, run_id='r1')

        def body():
            with c.guard():
                self._add(c, 'snap', fail=True)
                self._add(c, 'vol')
                c.outcome = 'image i1 is active'

        exc = self.assertRaises(errors.CleanupError, body)
        text = str(exc)
        self.assertIn('The backup succeeded (image i1 is active)', text)
        self.assertIn('openstack volume delete snap', text)
        self.assertIn('openstack backup cleanup --run-id r1', text)
        self.assertNotIn('openstack volume delete vol', text)
        self.assertEqual(['vol', 'snap'], self.calls)

    def test_cleanup_failure_after_failure_keeps_both_messages(self):
        c = _cleanup.Cleanup(self.reporter)

        def body():
            with c.guard():
                self._add(c, 'snap', fail=True)
                raise errors.WaitError('snapshot went to error')

        exc = self.assertRaises(errors.CleanupError, body)
        self.assertIn('snapshot went to error', str(exc))
        self.assertIn('openstack volume delete snap', str(exc))

    def test_keyboard_interrupt_cleans_and_reraises(self):
        c = _cleanup.Cleanup(self.reporter)

        def body():
            with c.guard():
                self._add(c, 'snap')
                raise KeyboardInterrupt()

        self.assertRaises(KeyboardInterrupt, body)
        self.assertEqual(['snap'], self.calls)

    def test_sigterm_becomes_interrupted_and_cleans(self):
        c = _cleanup.Cleanup(self.reporter)
        before = signal.getsignal(signal.SIGTERM)

        def body():
            with c.guard():
                self._add(c, 'vol')
                os.kill(os.getpid(), signal.SIGTERM)

        exc = self.assertRaises(errors.Interrupted, body)
        self.assertEqual('SIGTERM', exc.signame)
        self.assertEqual(['vol'], self.calls)
        self.assertEqual(before, signal.getsignal(signal.SIGTERM))

    def test_signal_while_creating_is_held_until_registered(self):
        c = _cleanup.Cleanup(self.reporter)
        steps = []

        def body():
            with c.guard():
                with c.creating():
                    # the create call: the cloud has made the resource
                    os.kill(os.getpid(), signal.SIGINT)
                    steps.append('created')
                    self._add(c, 'vol')
                steps.append('after')

        exc = self.assertRaises(errors.Interrupted, body)
        self.assertEqual('SIGINT', exc.signame)
        # registered before the interrupt, so it was removed
        self.assertEqual(['created'], steps)
        self.assertEqual(['vol'], self.calls)

    def test_signal_held_while_create_fails_still_interrupts(self):
        c = _cleanup.Cleanup(self.reporter)

        def body():
            with c.guard():
                with c.creating():
                    os.kill(os.getpid(), signal.SIGTERM)
                    raise errors.BackupError('no backup service')

        exc = self.assertRaises(errors.Interrupted, body)
        self.assertEqual('SIGTERM', exc.signame)
        self.assertIsInstance(exc.__context__, errors.BackupError)

    def test_creating_without_signal_changes_nothing(self):
        c = _cleanup.Cleanup(self.reporter)
        with c.guard():
            with c.creating():
                self._add(c, 'vol')
        self.assertEqual(['vol'], self.calls)
        # a later signal is not held any more
        def body():
            with c.guard():
                os.kill(os.getpid(), signal.SIGINT)
                self.calls.append('not reached')
        self.assertRaises(errors.Interrupted, body)
        self.assertEqual(['vol'], self.calls)

    def test_first_signal_during_cleanup_finishes_it_then_stops(self):
        c = _cleanup.Cleanup(self.reporter)

        def slow():
            self.calls.append('start')
            os.kill(os.getpid(), signal.SIGINT)
            self.calls.append('end')

        def body():
            with c.guard():
                self._add(c, 'snap')
                c.add('slow', slow, leftover='x', remove_command='y')
                c.outcome = 'image i1 is active'

        exc = self.assertRaises(errors.Interrupted, body)
        self.assertEqual('SIGINT', exc.signame)
        # the cleanup went on to the end
        self.assertEqual(['start', 'end', 'snap'], self.calls)
        err = self.err.getvalue()
        self.assertIn('SIGINT received: finishing the cleanup first', err)
        self.assertIn('Press Ctrl-C again to stop waiting', err)
        self.assertIn('The backup was made (image i1 is active)', err)

    def test_keep_temporary(self):
        c = _cleanup.Cleanup(self.reporter, keep_temporary=True)
        with c.guard():
            self._add(c, 'snap')
        self.assertEqual([], self.calls)
        self.assertIn('openstack volume delete snap', self.err.getvalue())
        self.assertNotIn('backup cleanup', self.err.getvalue())

    def test_keep_temporary_names_the_runs_cleanup(self):
        c = _cleanup.Cleanup(self.reporter, keep_temporary=True,
                             run_id='r1')
        with c.guard():
            self._add(c, 'snap')
        self.assertEqual([], self.calls)
        err = self.err.getvalue()
        self.assertIn('openstack volume delete snap', err)
        self.assertIn('(or: openstack backup cleanup --run-id r1)', err)

    def test_keep_temporary_still_removes_partials_on_failure(self):
        c = _cleanup.Cleanup(self.reporter, keep_temporary=True)

        def body():
            with c.guard():
                self._add(c, 'snap')
                self._add(c, 'image', when=_cleanup.PARTIAL)
                raise errors.WaitError('x')

        self.assertRaises(errors.WaitError, body)
        self.assertEqual(['image'], self.calls)

    def test_interrupt_with_leftovers_prints_them(self):
        c = _cleanup.Cleanup(self.reporter)

        def body():
            with c.guard():
                self._add(c, 'snap', fail=True)
                raise KeyboardInterrupt()

        self.assertRaises(KeyboardInterrupt, body)
        self.assertIn('openstack volume delete snap', self.err.getvalue())

    def test_signal_handlers_outside_main_thread(self):
        state = _cleanup._Signals()
        with mock.patch.object(
            _cleanup.signal, 'signal', side_effect=ValueError('thread')
        ):
            state.install()
        self.assertEqual({}, state.saved)

    def test_handlers_restored_after_nested_guards(self):
        before = signal.getsignal(signal.SIGINT)
        outer, inner = (_cleanup.Cleanup(self.reporter) for _ in range(2))
        with outer.guard():
            with inner.guard():
                self.assertEqual([outer, inner], _cleanup._SIGNALS.guards)
            self.assertEqual([outer], _cleanup._SIGNALS.guards)
            self.assertIsNot(before, signal.getsignal(signal.SIGINT))
        self.assertEqual(before, signal.getsignal(signal.SIGINT))
        self.assertEqual([], _cleanup._SIGNALS.received)


class TestBoundedCleanup(base.TestCase):
    """Double signals, bounded undo actions, error_deleting; with
    openstacksdk's real wait loops polling a fake cloud."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)
        self.bs, _ = fakes.make_proxies()
        self.cloud = self.useFixture(fakes.CloudStatuses(self.bs))
        self.calls = []

    def _stuck_volume(self):
        """A volume whose deletion never ends."""
        vol = fakes.volume(status='deleting')
        self.cloud.timeline(vol, 'deleting')
        return vol

    def _add_delete(self, c, vol, signal_after=None):
        def action():
            self.calls.append(vol.id)
            if signal_after is not None:
                threading.Timer(
                    signal_after[1], os.kill, (os.getpid(), signal_after[0])
                ).start()
            waits.wait_for_delete(
                self.bs, vol, kind='volume', step='delete temporary volume',
                timeout=600, interval=0.05,
            )

        c.add(
            f'delete temporary volume {vol.id}', action,
            leftover=f'volume {vol.id}',
            remove_command=['openstack', 'volume', 'delete', vol.id],
        )

    def _interrupted_run(self, c, first, second):
        snap, vol = self._stuck_volume(), self._stuck_volume()

        def body():
            with c.guard():
                self._add_delete(c, snap)
                # a second signal while this one waits for its volume
                self._add_delete(c, vol, signal_after=(second, 0.3))
                os.kill(os.getpid(), first)

        started = time.monotonic()
        exc = self.assertRaises(errors.Interrupted, body)
        return exc, time.monotonic() - started, snap, vol

    def test_second_sigint_stops_waiting_and_lists_what_is_left(self):
        c = _cleanup.Cleanup(self.reporter, run_id='r1')
        exc, elapsed, snap, vol = self._interrupted_run(
            c, signal.SIGINT, signal.SIGINT
        )
        self.assertLess(elapsed, 5)
        self.assertEqual('SIGINT', exc.signame)
        self.assertEqual(130, exc.exit_code)
        # the wait in progress was abandoned, the next undo never started
        self.assertEqual([vol.id], self.calls)
        err = self.err.getvalue()
        self.assertIn('SIGINT received: stopping and removing', err)
        self.assertIn('Press Ctrl-C again to stop waiting', err)
        self.assertIn('SIGINT received again: stopped waiting', err)
        self.assertIn(f'openstack volume delete {vol.id}', err)
        self.assertIn(f'openstack volume delete {snap.id}', err)
        self.assertIn('openstack backup cleanup --run-id r1', err)

    def test_second_sigterm_exits_143(self):
        c = _cleanup.Cleanup(self.reporter)
        exc, elapsed, _snap, vol = self._interrupted_run(
            c, signal.SIGTERM, signal.SIGTERM
        )
        self.assertLess(elapsed, 5)
        self.assertEqual('SIGTERM', exc.signame)
        self.assertEqual(143, exc.exit_code)
        self.assertIn(
            f'openstack volume delete {vol.id}', self.err.getvalue()
        )

    def test_second_signal_after_a_failure_stops_waiting_too(self):
        c = _cleanup.Cleanup(self.reporter)
        vol = self._stuck_volume()

        def body():
            with c.guard():
                self._add_delete(c, vol, signal_after=(signal.SIGINT, 0.2))
                raise errors.WaitError('upload failed')

        started = time.monotonic()
        # first signal during the cleanup: noted; the wait goes on
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        exc = self.assertRaises(errors.Interrupted, body)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIsInstance(exc.__context__, errors.WaitError)
        self.assertIn(
            f'openstack volume delete {vol.id}', self.err.getvalue()
        )

    def test_second_signal_while_creating_removes_nothing_lists_all(self):
        c = _cleanup.Cleanup(self.reporter)
        calls = self.calls

        def body():
            with c.guard():
                c.add('delete snap', lambda: calls.append('snap'),
                      leftover='snapshot s1',
                      remove_command=['openstack', 'volume', 'snapshot',
                                      'delete', 's1'])
                with c.creating():
                    os.kill(os.getpid(), signal.SIGINT)
                    os.kill(os.getpid(), signal.SIGTERM)
                    c.add('delete vol', lambda: calls.append('vol'),
                          leftover='volume v1',
                          remove_command=['openstack', 'volume', 'delete',
                                          'v1'])

        exc = self.assertRaises(errors.Interrupted, body)
        self.assertEqual(143, exc.exit_code)
        self.assertEqual([], calls)
        err = self.err.getvalue()
        self.assertIn('openstack volume delete v1', err)
        self.assertIn('openstack volume snapshot delete s1', err)

    def test_each_undo_waits_at_most_the_cleanup_timeout(self):
        c = _cleanup.Cleanup(self.reporter, timeout=1)
        vols = [self._stuck_volume() for _ in range(2)]

        def body():
            with c.guard():
                for vol in vols:
                    self._add_delete(c, vol)

        started = time.monotonic()
        exc = self.assertRaises(errors.CleanupError, body)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 6)
        self.assertGreaterEqual(elapsed, 2)  # both tried, each ~1 s
        self.assertEqual([v.id for v in reversed(vols)], self.calls)
        for vol in vols:
            self.assertIn(f'openstack volume delete {vol.id}', str(exc))
        self.assertIn('raise --cleanup-timeout', self.err.getvalue())

    def test_error_deleting_gives_up_at_once_and_names_the_leftover(self):
        run = tags.Run(run_id='0000000000f2')
        source = fakes.volume(status='in-use', name='db')
        tmp = fakes.volume(status='creating')
        self.bs.create_volume.return_value = tmp
        self.bs.get_volume.side_effect = lambda vid: tmp
        # created, then the deletion the cloud accepted fails
        self.cloud.timeline(
            tmp, 'creating', 'available', 'deleting', 'error_deleting'
        )
        c = _cleanup.Cleanup(self.reporter, run_id=run.run_id, timeout=600)

        def body():
            with c.guard():
                volumes.create_temporary_volume(
                    self.bs, fakes.snapshot(), source, run=run, cleanup=c,
                    timeout=60, interval=0.05,
                )

        started = time.monotonic()
        exc = self.assertRaises(errors.CleanupError, body)
        self.assertLess(time.monotonic() - started, 3)
        self.bs.delete_volume.assert_called_once_with(tmp, ignore_missing=True)
        self.assertIn(f'openstack volume delete {tmp.id}', str(exc))
        self.assertIn('openstack backup cleanup --run-id 0000000000f2', str(exc))
        self.assertIn("'error_deleting'", self.err.getvalue())

    def test_remove_commands_are_shell_quoted(self):
        hostile = 'v1; rm -rf ~ $(reboot)\x1b[2J'
        c = _cleanup.Cleanup(self.reporter)

        def fail():
            raise RuntimeError('busy')

        def body():
            with c.guard():
                c.add('delete', fail, leftover=f'volume {hostile}',
                      remove_command=['openstack', 'volume', 'delete',
                                      hostile])

        exc = self.assertRaises(errors.CleanupError, body)
        [line] = [ln.strip() for ln in str(exc).splitlines()
                  if ln.strip().startswith('openstack volume delete')]
        self.assertEqual(
            ['openstack', 'volume', 'delete', hostile], shlex.split(line)
        )
        # the leftover's name is shown escaped
        self.assertIn('volume v1; rm -rf ~ $(reboot)\\x1b[2J', str(exc))

    def test_default_timeout_from_the_command(self):
        self.assertEqual(
            _cleanup.DEFAULT_TIMEOUT, _cleanup.Cleanup(self.reporter).timeout
        )
        self.assertEqual(120.0, _cleanup.DEFAULT_TIMEOUT)
        with _cleanup.default_timeout(7):
            self.assertEqual(7, _cleanup.Cleanup(self.reporter).timeout)
            self.assertEqual(
                3, _cleanup.Cleanup(self.reporter, timeout=3).timeout
            )
        with _cleanup.default_timeout(None):
            self.assertEqual(120, _cleanup.Cleanup(self.reporter).timeout)

    def test_exit_codes(self):
        self.assertEqual(130, errors.Interrupted('SIGINT').exit_code)
        self.assertEqual(143, errors.Interrupted('SIGTERM').exit_code)
