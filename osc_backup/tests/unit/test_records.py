"""The record keys live in one module (osc_backup.common.records)."""

import ast
import os

import testtools

import osc_backup
from osc_backup.common import records

ROOT = os.path.dirname(os.path.abspath(osc_backup.__file__))


def keys():
    return {name: value for name, value in vars(records).items()
            if name.isupper() and name != 'PREFIX'}


class TestRecords(testtools.TestCase):
    def test_every_key_is_prefixed_and_distinct(self):
        values = list(keys().values())
        self.assertGreater(len(values), 20)
        for value in values:
            self.assertTrue(value.startswith(records.PREFIX), value)
        self.assertEqual(len(values), len(set(values)))

    def test_no_other_module_spells_a_key(self):
        found = []
        for sub in ('procedures', 'v1'):
            for directory, _, files in os.walk(os.path.join(ROOT, sub)):
                for name in files:
                    if not name.endswith('.py'):
                        continue
                    path = os.path.join(directory, name)
                    with open(path, encoding='utf-8') as f:
                        tree = ast.parse(f.read())
                    for node in ast.walk(tree):
                        if (isinstance(node, ast.Constant)
                                and isinstance(node.value, str)
                                and node.value.startswith(records.PREFIX)
                                and node.value in keys().values()):
                            found.append(f'{path}:{node.lineno} '
                                         f'{node.value}')
                        # PREFIX + 'key' builds a key as well
                        elif (isinstance(node, ast.BinOp)
                              and isinstance(node.op, ast.Add)
                              and getattr(node.left, 'attr', getattr(
                                  node.left, 'id', None)) == 'PREFIX'
                              and isinstance(node.right, ast.Constant)):
                            found.append(f'{path}:{node.lineno} '
                                         f'PREFIX + {node.right.value!r}')
        self.assertEqual([], found)
