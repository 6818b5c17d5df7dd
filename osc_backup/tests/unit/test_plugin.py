import argparse
import subprocess
import sys

from importlib import metadata

from cliff import command as cliff_command

from osc_backup import plugin
from osc_backup.tests.unit import base


class TestPlugin(base.TestCase):
    def test_hooks(self):
        self.assertEqual('backup', plugin.API_NAME)
        self.assertEqual('os_backup_api_version', plugin.API_VERSION_OPTION)
        self.assertIn(plugin.DEFAULT_API_VERSION, plugin.API_VERSIONS)
        conn = object()
        instance = type('I', (), {'sdk_connection': conn})()
        self.assertIs(conn, plugin.make_client(instance))

    def test_option(self):
        parser = plugin.build_option_parser(argparse.ArgumentParser())
        args = parser.parse_args(['--os-backup-api-version', '1'])
        self.assertEqual('1', args.os_backup_api_version)

    def test_registered(self):
        eps = metadata.entry_points(group='openstack.cli.extension')
        self.assertIn('osc_backup.plugin', [ep.value for ep in eps])

    def test_every_command_loads_and_documents_its_options(self):
        eps = list(metadata.entry_points(group='openstack.backup.v1'))
        self.assertGreaterEqual(len(eps), 2)
        for ep in eps:
            cls = ep.load()
            self.assertTrue(issubclass(cls, cliff_command.Command), ep.name)
            self.assertTrue(cls._description, ep.name)
            parser = cls(None, None).get_parser(ep.name)
            for action in parser._actions:
                self.assertTrue(
                    action.help, f'{ep.name}: {action.dest} has no help'
                )

    def test_plugin_import_is_light(self):
        # OSC imports the plugin on every call: it must not pull in the
        # SDK, cliff commands or our procedures.
        code = (
            'import sys, osc_backup.plugin;'
            'heavy = [m for m in ("openstack", "osc_lib", "cliff", '
            '"osc_backup.common", "osc_backup.procedures", "tqdm", '
            '"requests") if m in sys.modules];'
            'print(",".join(heavy))'
        )
        out = subprocess.run(
            [sys.executable, '-c', code], capture_output=True, text=True,
            check=True,
        ).stdout.strip()
        self.assertEqual('', out)
