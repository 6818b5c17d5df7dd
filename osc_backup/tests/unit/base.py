"""Unit test bases (after OSC's tests/unit/utils.py, on osc_lib.test)."""

import io
from unittest import mock

import fixtures
from osc_lib.test import base as osc_base
from osc_lib.test import fakes as osc_fakes

from osc_backup.tests.unit import fakes


class TestCase(osc_base.TestCase):
    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.LoggerFixture())


class TestCommand(fakes.FakeClientMixin, osc_base.TestCommand):
    """A cliff command test with spec'd SDK proxies and captured stderr."""

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.LoggerFixture())
        self.stderr = io.StringIO()
        self.app.stderr = self.stderr
        self.app.options = osc_fakes.FakeOptions(verbose_level=1)

    def check_parser_error(self, cmd, arglist):
        """Assert that argparse rejects ``arglist``; return its message."""
        err = io.StringIO()
        with mock.patch('sys.stderr', err):
            self.assertRaises(
                osc_base.ParserException,
                self.check_parser,
                cmd,
                arglist,
                [],
            )
        return err.getvalue()
