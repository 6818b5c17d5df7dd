import io
import os
import stat
from unittest import mock

import fixtures
from osc_lib import exceptions

from osc_backup.tests.unit import base
from osc_backup.tests.unit import test_secret as helpers
from osc_backup.v1 import secret as secret_cmd


class FakeStdout(io.TextIOWrapper):
    def __init__(self, tty):
        self.raw_bytes = io.BytesIO()
        super().__init__(self.raw_bytes, encoding='utf-8')
        self._tty = tty

    def isatty(self):
        return self._tty


class TestSaveSecret(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.fake = helpers.FakeKM()
        self.conn.key_manager = self.fake.km
        self.cmd = secret_cmd.SaveSecret(self.app, None)
        self.dir = self.useFixture(fixtures.TempDir()).path

    def test_parser(self):
        self.check_parser(
            self.cmd, ['k'],
            [('secret', 'k'), ('file', None), ('written', 'payload')])
        self.check_parser(
            self.cmd, ['k', '--file', 'f', '--luks-passphrase'],
            [('file', 'f'), ('written', 'luks-passphrase')])
        self.check_parser(
            self.cmd, ['k', '--legacy-passphrase'],
            [('written', 'luks-passphrase-legacy')])
        self.check_parser_error(
            self.cmd, ['k', '--luks-passphrase', '--legacy-passphrase'])
        self.check_parser_error(self.cmd, [])

    def test_file(self):
        path = os.path.join(self.dir, 'key')
        parsed = self.check_parser(
            self.cmd, [helpers.UUID, '--file', path], [])
        columns, data = self.cmd.take_action(parsed)
        self.assertEqual(secret_cmd.SAVE_COLUMNS, columns)
        row = dict(zip(columns, data))
        self.assertEqual(helpers.UUID, row['secret_id'])
        self.assertEqual(path, row['file'])
        self.assertEqual(32, row['size'])
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))
        self.assertNotIn(helpers.KEY.hex(), repr(data))

    def test_refuses_binary_to_terminal(self):
        self.app.stdout = FakeStdout(tty=True)
        parsed = self.check_parser(self.cmd, [helpers.UUID], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed)
        self.assertIn('terminal', str(exc))
        self.assertEqual(b'', self.app.stdout.raw_bytes.getvalue())

    def test_stdout_pipe_payload_only(self):
        self.app.stdout = FakeStdout(tty=False)
        parsed = self.check_parser(self.cmd, [helpers.UUID], [])
        columns, _data = self.cmd.take_action(parsed)
        self.assertEqual((), columns)
        self.assertEqual(helpers.KEY, self.app.stdout.raw_bytes.getvalue())
        with mock.patch.object(
            secret_cmd.command.ShowOne, 'produce_output'
        ) as produce:
            self.assertEqual(0, self.cmd.produce_output(parsed, (), ()))
        produce.assert_not_called()

    def test_passphrase_to_terminal(self):
        self.app.stdout = FakeStdout(tty=True)
        parsed = self.check_parser(
            self.cmd, [helpers.UUID, '--luks-passphrase'], [])
        self.cmd.take_action(parsed)
        self.assertEqual(
            helpers.KEY.hex().encode(), self.app.stdout.raw_bytes.getvalue())
