"""Tests that disturb the cloud: run after the functional tests, one at a time.

Not part of osc_backup/tests/functional, whose tests run in parallel
against the cloud: stopping cinder-backup there would fail another test's
backup, and `down` would fail them all.  With --serial (or
--concurrency 1) unittest runs modules, classes and methods in name order:
this module's name sorts last so that `down` comes after every other
teardown test, and its methods run as test_1_, test_2_, test_3_.  Run with:

    .venv/bin/python -m stestr --test-path ./osc_backup/tests/functional_teardown \
        --top-dir ./ run --serial
"""

import os
import socket
import time

import testtools

from osc_backup.tests.functional.base import clouds_yaml, minicloud


def listening(port):
    """Is anything listening on TCP `port`, on any address?"""
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if state == '0A' and int(local.rsplit(':', 1)[1],
                                             16) == port:
                        return True
        except OSError:
            pass
    # and ask the loopback address directly
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(('127.0.0.1', port)) == 0


def processes_of(state):
    """Processes of the cloud: its marker in their environment, or (gunicorn
    rewrites what /proc shows of it) a process title naming the state dir;
    not a developer's `tail -f $STATE/log/...`."""
    marker = ('MINICLOUD_INSTANCE=%s' % state).encode()
    title = (' %s/]' % state).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/environ' % pid, 'rb') as f:
                env = f.read().split(b'\0')
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read().replace(b'\0', b' ')
        except OSError:
            continue
        if int(pid) != os.getpid() and (
                marker in env or title in cmd):
            found.append('%s %s' % (pid, cmd.decode(errors='replace')))
    return found


class TestMinicloudTeardown(testtools.TestCase):

    def _require_cloud(self):
        if minicloud('status', check=False, timeout=120).returncode != 0:
            if os.environ.get('CI', '').lower() == 'true':
                self.fail('CI=true and minicloud is not up')
            self.skipTest('minicloud is not up (tools/minicloud up)')

    def test_1_up_twice_is_a_fast_no_op(self):
        self._require_cloud()
        for _ in range(2):
            start = time.time()
            p = minicloud('up', timeout=1800)
            elapsed = time.time() - start
        self.assertEqual(0, p.returncode)
        # the cloud was already up: the second call only checks health
        self.assertLess(elapsed, 20, p.stderr)
        self.assertNotIn('starting', p.stderr)
        self.assertIn('healthy', p.stderr)
        self.assertEqual(0, minicloud('status', check=False).returncode)

    def test_2_stop_and_start_cinder_backup(self):
        self._require_cloud()
        # whatever happens, leave the service running
        self.addCleanup(minicloud, 'start', 'cinder-backup')
        minicloud('stop', 'cinder-backup')
        p = minicloud('status', check=False)
        self.assertNotEqual(0, p.returncode)
        down = [line.split()[0] for line in p.stdout.splitlines()
                if line.split()[1:2] == ['DOWN']]
        self.assertEqual(['cinder-backup'], down, p.stdout)
        self.assertIn('cinder-backup', p.stdout.splitlines()[-1])
        minicloud('start', 'cinder-backup')
        p = minicloud('status', check=False)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)

    def test_3_down_leaves_nothing_listening(self):
        ports = [int(p) for p in minicloud('ports', timeout=60).stdout.split()]
        # keystone, nova-api, placement, the neutron stub
        for port in (5000, 8774, 8778, 9696):
            self.assertIn(port, ports)
        state = os.path.dirname(clouds_yaml())
        p = minicloud('down', check=False, timeout=900)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)
        self.assertEqual([], [port for port in ports if listening(port)])
        # nor any process of the cloud (nova-conductor, -scheduler and
        # -compute listen on no port)
        self.assertEqual([], processes_of(state))
        status = minicloud('status', check=False, timeout=120)
        self.assertNotEqual(0, status.returncode)
        self.assertEqual(
            [], [line for line in status.stdout.splitlines()
                 if line.split()[1:2] == ['ok']], status.stdout)
