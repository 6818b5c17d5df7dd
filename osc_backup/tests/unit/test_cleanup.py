import io
import os
import signal
from unittest import mock

from osc_backup.common import cleanup as _cleanup
from osc_backup.common import errors
from osc_backup.common.progress import Reporter
from osc_backup.tests.unit import base


class TestCleanup(base.TestCase):
    def setUp(self):
        super().setUp()
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

    def test_signal_during_cleanup_is_ignored(self):
        c = _cleanup.Cleanup(self.reporter)

        def slow():
            self.calls.append('start')
            os.kill(os.getpid(), signal.SIGINT)
            self.calls.append('end')

        with c.guard():
            c.add('slow', slow, leftover='x', remove_command='y')
        self.assertEqual(['start', 'end'], self.calls)
        self.assertIn('SIGINT received during cleanup', self.err.getvalue())

    def test_keep_temporary(self):
        c = _cleanup.Cleanup(self.reporter, keep_temporary=True)
        with c.guard():
            self._add(c, 'snap')
        self.assertEqual([], self.calls)
        self.assertIn('openstack volume delete snap', self.err.getvalue())

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
        c = _cleanup.Cleanup(self.reporter)
        with mock.patch.object(
            _cleanup.signal, 'signal', side_effect=ValueError('thread')
        ):
            c._install_signals()
        self.assertEqual({}, c._saved_handlers)
