"""`tools/minicloud down` stops everything: run last, on its own.

Not part of osc_backup/tests/functional, whose tests run in parallel
against the cloud.  Run with:

    .venv/bin/python -m stestr --test-path ./osc_backup/tests/functional_teardown \
        --top-dir ./ run --serial
"""

import socket

import testtools

from osc_backup.tests.functional.base import minicloud


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


class TestMinicloudDown(testtools.TestCase):

    def test_down_leaves_nothing_listening(self):
        ports = [int(p) for p in minicloud('ports', timeout=60).stdout.split()]
        self.assertIn(5000, ports)
        p = minicloud('down', check=False, timeout=900)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)
        self.assertEqual([], [port for port in ports if listening(port)])
        status = minicloud('status', check=False, timeout=120)
        self.assertNotEqual(0, status.returncode)
        self.assertEqual(
            [], [line for line in status.stdout.splitlines()
                 if line.split()[1:2] == ['ok']], status.stdout)
