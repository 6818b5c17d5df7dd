"""Interrupts on the local real cloud: a second Ctrl-C stops waiting.

The first SIGINT stops a `backup volume create --via-image` of an in-use
volume and starts its cleanup; a second one, sent as soon as the command
says it is cleaning up, ends the run at once with exit status 130 (143 for
SIGTERM) and the leftovers listed with the commands that remove them. The
test then runs those very commands and checks nothing is left.
"""

import shlex
import signal
import subprocess
import time

from osc_backup.tests.functional import base


class DoubleSignalTestCase(base.FunctionalTestCase):
    def interrupted_twice(self, first, second, expected_status):
        # the minicloud deletes volumes with 'slow-delete' in their name in
        # 30 s (tools/minicloud_lib/filedriver.py): the temporary volume's
        # deletion is still being waited for when the second signal comes,
        # whether the first came during the run or after its success
        vol = self.create_volume(
            1, name=self.unique_name('ft-slow-delete'))
        self.write_random(vol['id'], mib=16)
        self.minicloud('attach', vol['id'])
        name = self.unique_name('ft-twice')
        argv = [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
                'volume', 'create', '--via-image', '--name', name, vol['id']]
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.addCleanup(self._delete_images_named, name)
        # the temporary volume exists: its removal has to wait for Cinder
        deadline = time.time() + base.WAIT_TIMEOUT
        while not any(kind == 'volume' for kind, *_ in
                      self.temporaries_of(vol['name'])):
            self.assertIsNone(proc.poll(), 'finished before the signal')
            self.assertLess(time.time(), deadline, 'no temporary volume')
            time.sleep(0.3)
        proc.send_signal(first)
        announced = []
        for line in proc.stderr:
            announced.append(line)
            if ('received: stopping and removing' in line
                    or 'received: finishing the cleanup first' in line):
                break
        proc.send_signal(second)
        sent = time.monotonic()
        out, rest = proc.communicate(timeout=300)
        stopped_after = time.monotonic() - sent
        err = ''.join(announced) + rest
        self.record(argv, proc.returncode, out, err)

        self.assertEqual(expected_status, proc.returncode, err)
        self.assertLess(stopped_after, 15, err)
        signame = signal.Signals(second).name
        self.assertIn(f'{signame} received again: stopped waiting', err)
        self.assertIn(f'Interrupted by {signame}.', err)
        commands = [
            shlex.split(line.strip()) for line in err.splitlines()
            if line.startswith('  openstack ')
        ]
        # what is left of the run is listed; its removal commands work
        self.assertTrue(commands, err)
        for argv_ in commands:
            self.assertEqual('openstack', argv_[0], err)
            if argv_[1:3] == ['backup', 'cleanup']:
                continue
            kind, ident = ' '.join(argv_[1:-2]), argv_[-1]
            self.assertIn(kind, ('volume', 'volume snapshot', 'image'), err)
            if self.run_cli([*kind.split(), 'show', ident]).returncode:
                continue  # the abandoned request did remove it after all
            self._wait_not_busy(kind, ident, base.MEMBER_CLOUD)
            if self.run_cli([*kind.split(), 'show', ident]).returncode:
                continue  # its deletion had been accepted and finished
            self.openstack(argv_[1:])
            self.wait_for_delete(kind, ident)
        self.assertEqual([], self.temporaries_of(vol['name']), err)
        self.assertEqual('in-use', self.openstack(
            ['volume', 'show', vol['id']], parse_output=True)['status'])

    def temporaries_of(self, source_name):
        return [t for t in self.temporaries()
                if t[1].endswith(f'-of-{source_name}')]

    def _delete_images_named(self, name):
        for row in self.openstack(['image', 'list', '--name', name],
                                  parse_output=True):
            self._delete_simple('image', row['ID'], base.MEMBER_CLOUD)

    def test_second_sigint_stops_waiting_lists_leftovers_exit_130(self):
        self.interrupted_twice(signal.SIGINT, signal.SIGINT, 130)

    def test_second_sigterm_exits_143(self):
        self.interrupted_twice(signal.SIGTERM, signal.SIGTERM, 143)
