"""The command bases: errors, signals, API timeout, cleanup timeout and
escaped output, the same for every verb."""

import socket
import threading
import time
from unittest import mock

import fixtures
import requests
from cliff import columns as cliff_columns
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from openstack import exceptions as sdk_exc
from osc_lib import exceptions
from osc_lib.cli import format_columns

from osc_backup import command
from osc_backup.common import cleanup
from osc_backup.common import errors
from osc_backup.tests.unit import base


class Probe(command.ShowOne):
    """A verb whose action each test chooses."""

    _description = 'probe'

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        command.add_timeout_arg(parser)
        return parser

    def backup_action(self, parsed_args):
        return self.action(parsed_args)


class ProbeList(command.Lister):
    _description = 'probe list'

    def backup_action(self, parsed_args):
        return self.action(parsed_args)


def http_error(status, details, method='POST',
               url='http://cinder:8776/v3/p/volumes'):
    """The exception openstacksdk raises for a real error response."""
    resp = requests.Response()
    resp.status_code = status
    resp.url = url
    resp.request = requests.Request(method, url).prepare()
    resp.headers['x-openstack-request-id'] = 'req-42'
    resp.headers['content-type'] = 'application/json'
    resp._content = (
        b'{"badRequest": {"message": "' + details.encode() + b'"}}'
    )
    try:
        sdk_exc.raise_from_response(resp)
    except sdk_exc.HttpException as exc:
        return exc
    raise AssertionError('no exception')


class TestErrors(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.cmd = Probe(self.app, None)
        self.parsed = self.check_parser(self.cmd, [], [])

    def fail_with(self, exc):
        def action(parsed_args):
            raise exc
        self.cmd.action = action

    def test_sdk_http_error_is_one_clear_line(self):
        self.fail_with(http_error(400, 'Invalid input:\\nsize\\u001b[2J'))
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, self.parsed
        )
        text = str(exc)
        self.assertEqual(1, len(text.splitlines()), text)
        self.assertIn(
            'POST http://cinder:8776/v3/p/volumes failed: HTTP 400', text
        )
        self.assertIn('Invalid input', text)
        self.assertIn('request ID req-42', text)
        self.assertNotIn('\x1b', text)

    def test_other_sdk_errors_too(self):
        self.fail_with(sdk_exc.EndpointNotFound('No image endpoint'))
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, self.parsed
        )
        self.assertEqual('No image endpoint', str(exc))

    def test_lost_connection_and_timeout_are_one_line(self):
        for err in (
            ks_exc.ConnectTimeout('Request to http://x/v3 timed out'),
            ks_exc.ConnectFailure('Unable to establish connection'),
        ):
            self.fail_with(err)
            exc = self.assertRaises(
                exceptions.CommandError, self.cmd.take_action, self.parsed
            )
            self.assertEqual(str(err), str(exc))

    def test_backup_error_keeps_lines_escapes_controls(self):
        self.fail_with(errors.BackupError('failed: db\x1b]0;owned\x07\nnext'))
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, self.parsed
        )
        self.assertEqual('failed: db\\x1b]0;owned\\x07\nnext', str(exc))

    def test_lister_rows_errors_are_handled_too(self):
        cmd = ProbeList(self.app, None)

        def rows():
            yield ['a']
            raise http_error(500, 'boom', method='GET')

        cmd.action = lambda parsed_args: (('Name',), rows())
        parsed = self.check_parser(cmd, [], [])
        exc = self.assertRaises(
            exceptions.CommandError, cmd.take_action, parsed
        )
        self.assertIn('HTTP 500', str(exc))


class TestSignals(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.cmd = Probe(self.app, None)
        self.parsed = self.check_parser(self.cmd, [], [])

    def interrupted(self, exc):
        def action(parsed_args):
            raise exc
        self.cmd.action = action
        return self.assertRaises(
            SystemExit, self.cmd.take_action, self.parsed
        )

    def test_sigint_exits_130(self):
        exit_ = self.interrupted(errors.Interrupted('SIGINT'))
        self.assertEqual(130, exit_.code)
        self.assertIn('Interrupted by SIGINT.', self.stderr.getvalue())

    def test_sigterm_exits_143(self):
        exit_ = self.interrupted(errors.Interrupted('SIGTERM'))
        self.assertEqual(143, exit_.code)
        self.assertIn('Interrupted by SIGTERM.', self.stderr.getvalue())

    def test_plain_ctrl_c_exits_130(self):
        self.assertEqual(130, self.interrupted(KeyboardInterrupt()).code)


class TestCleanupTimeout(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.cmd = Probe(self.app, None)
        self.cmd.action = lambda parsed_args: (
            ('timeout',), [cleanup.Cleanup(self.reporter_of()).timeout]
        )

    def reporter_of(self):
        return self.cmd.reporter(None)

    def test_default_reaches_every_cleanup_stack(self):
        parsed = self.check_parser(
            self.cmd, [], [('cleanup_timeout', cleanup.DEFAULT_TIMEOUT)]
        )
        self.assertEqual([120.0], self.cmd.take_action(parsed)[1])

    def test_option_reaches_every_cleanup_stack(self):
        parsed = self.check_parser(
            self.cmd, ['--cleanup-timeout', '5'], [('cleanup_timeout', 5.0)]
        )
        self.assertEqual([5.0], self.cmd.take_action(parsed)[1])
        # and only for this run
        self.assertEqual(
            cleanup.DEFAULT_TIMEOUT,
            cleanup.Cleanup(self.reporter_of()).timeout,
        )

    def test_must_be_positive(self):
        err = self.check_parser_error(self.cmd, ['--cleanup-timeout', '0'])
        self.assertIn('must be greater than 0', err)

    #: verbs with --timeout that create nothing (they only delete what
    #: exists, waiting until it is gone): no cleanup stack, so no
    #: --cleanup-timeout, which would be an option that does nothing
    CREATE_NOTHING = {'backup_delete', 'backup_prune'}

    def test_every_verb_that_cleans_up_has_it(self):
        from importlib import metadata

        for ep in metadata.entry_points(group='openstack.backup.v1'):
            parser = ep.load()(None, None).get_parser(ep.name)
            options = {o for a in parser._actions for o in a.option_strings}
            if ep.name in self.CREATE_NOTHING:
                self.assertNotIn('--cleanup-timeout', options, ep.name)
            elif '--timeout' in options:
                self.assertIn('--cleanup-timeout', options, ep.name)


class TestEscapedOutput(base.TestCommand):
    NAME = 'db\x1b[2J\nforged line\u202e'

    def setUp(self):
        super().setUp()
        self.cmd = Probe(self.app, None)
        self.cmd.action = lambda parsed_args: (
            ('name', 'files', 'size'),
            [self.NAME, format_columns.ListColumn([self.NAME]), 3],
        )

    def test_table_and_value_escape_control_characters(self):
        for fmt in ('table', 'value', 'shell'):
            parsed = self.check_parser(self.cmd, ['-f', fmt], [])
            _cols, data = self.cmd.take_action(parsed)
            self.assertEqual('db\\x1b[2J\\nforged line\\u202e', data[0])
            self.assertIsInstance(data[1], cliff_columns.FormattableColumn)
            self.assertEqual(
                'db\\x1b[2J\\nforged line\\u202e', data[1].human_readable()
            )
            self.assertEqual(3, data[2])

    def test_json_and_yaml_keep_the_data(self):
        for fmt in ('json', 'yaml'):
            parsed = self.check_parser(self.cmd, ['-f', fmt], [])
            _cols, data = self.cmd.take_action(parsed)
            self.assertEqual(self.NAME, data[0])


class TestApiTimeout(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.session = ks_session.Session()
        self.app.client_manager.sdk_connection = mock.Mock(
            session=self.session
        )
        self.cmd = Probe(self.app, None)

    def test_default_when_the_user_set_none(self):
        self.assertIsNone(self.session.timeout)
        self.cmd.connection()
        self.assertEqual(command.DEFAULT_API_TIMEOUT, self.session.timeout)
        self.assertEqual(60.0, command.DEFAULT_API_TIMEOUT)

    def test_the_users_api_timeout_wins(self):
        self.session.timeout = 7.0  # clouds.yaml api_timeout: 7
        self.cmd.connection()
        self.assertEqual(7.0, self.session.timeout)

    def silent_server(self):
        """Accepts connections (the kernel does) and never answers."""
        server = socket.socket()
        server.bind(('127.0.0.1', 0))
        server.listen(8)
        self.addCleanup(server.close)
        return f'http://127.0.0.1:{server.getsockname()[1]}/v3'

    def test_a_stalled_request_ends_in_one_clear_error(self):
        url = self.silent_server()
        self.cmd.action = lambda parsed_args: (
            ('x',), [self.cmd.connection().session.get(url)]
        )
        parsed = self.check_parser(self.cmd, [], [])
        started = time.monotonic()
        with mock.patch.object(command, 'DEFAULT_API_TIMEOUT', 0.5):
            exc = self.assertRaises(
                exceptions.CommandError, self.cmd.take_action, parsed
            )
        self.assertLess(time.monotonic() - started, 10)
        self.assertIn('timed out', str(exc))

    def test_a_transfer_with_its_own_timeout_is_not_cut_short(self):
        # image data transfers pass timeout=(connect, read) per request:
        # the API timeout must not end a slow but live transfer
        server = socket.socket()
        server.bind(('127.0.0.1', 0))
        server.listen(1)
        self.addCleanup(server.close)

        def answer_late():
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                time.sleep(1.0)
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n'
                             b'Connection: close\r\n\r\nok')

        threading.Thread(target=answer_late, daemon=True).start()
        url = f'http://127.0.0.1:{server.getsockname()[1]}/file'
        self.session.timeout = 0.3  # the API timeout
        resp = self.session.get(url, timeout=(5, 5), authenticated=False)
        self.assertEqual(b'ok', resp.content)
