"""Control characters from the cloud are shown escaped, never obeyed."""

import io

from osc_backup.common import text
from osc_backup.common.progress import Reporter
from osc_backup.tests.unit import base


class TestPrintable(base.TestCase):
    def test_plain_text_is_unchanged(self):
        for plain in ('db-data', 'Données 2026', '数据卷', 'a b', ''):
            self.assertEqual(plain, text.printable(plain))

    def test_controls_are_escaped(self):
        cases = {
            'db\x1b[2J': 'db\\x1b[2J',   # ESC: clears the screen
            'a\rb': 'a\\rb',              # overwrites the line
            'a\nb': 'a\\nb',              # forges a line
            'a\tb\x07\x00\x7f': 'a\\tb\\x07\\x00\\x7f',
            'c1\x9b31m': 'c1\\x9b31m',    # C1 CSI
            'rtl\u202eexe.txt': 'rtl\\u202eexe.txt',
            'ls\u2028ps\u2029': 'ls\\u2028ps\\u2029',
        }
        for raw, shown in cases.items():
            self.assertEqual(shown, text.printable(raw))

    def test_non_strings(self):
        self.assertEqual('42', text.printable(42))

    def test_lines_keep_their_breaks_only(self):
        self.assertEqual(
            'one \\x1b[1m\ntwo\\r', text.printable_lines('one \x1b[1m\ntwo\r')
        )


class TestReporter(base.TestCase):
    def test_everything_written_is_escaped(self):
        out = io.StringIO()
        reporter = Reporter(stream=out, progress=True)
        reporter.note('volume db\x1b]0;title\x07 done\nnext')
        reporter.warn('x\x1b[2J')
        reporter.step('y\r')
        lines = out.getvalue().splitlines()
        self.assertEqual('volume db\\x1b]0;title\\x07 done', lines[0])
        self.assertEqual('next', lines[1])
        self.assertEqual('WARNING: x\\x1b[2J', lines[2])
        self.assertTrue(lines[3].endswith('] y\\r'), lines[3])
        self.assertNotIn('\x1b', out.getvalue())


class TestLabels(base.TestCase):
    """Names in labels are escaped where they are built, so that a newline
    in one cannot forge a line of a multi-line message."""

    def test_volume_and_server_labels(self):
        from osc_backup.common import volumes
        from osc_backup.procedures import server_plan
        from osc_backup.tests.unit import fakes

        vol = fakes.volume(name='db\nWARNING: forged')
        self.assertEqual(
            f'{vol.id} (db\\nWARNING: forged)', volumes.volume_label(vol)
        )
        server = type('S', (), {'id': 's1', 'name': 'web\x1b[2J'})()
        self.assertEqual('s1 (web\\x1b[2J)', server_plan.server_label(server))

    def test_progress_bar_label(self):
        from osc_backup.common import transfer

        out = io.StringIO()
        reporter = Reporter(stream=out, progress=True)
        with transfer._progress_bar(reporter, 10, 0, 'img\x1b]0;x\x07') as bar:
            bar.update(5)
        self.assertIn('img\\x1b]0;x\\x07', out.getvalue())
        self.assertNotIn('\x1b', out.getvalue())
