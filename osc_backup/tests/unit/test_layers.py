"""The package's layers: imports go v1 -> procedures -> common only.

Every module of ``osc_backup`` (tests excepted) is parsed with ``ast``;
every import in it, at module level or inside a function, is checked
against the floor it lives on. A procedure may import another procedure
(at module level: the module-level import graph must have no cycle).
"""

from __future__ import annotations

import ast
import os

import testtools

import osc_backup

PACKAGE = 'osc_backup'
ROOT = os.path.dirname(os.path.abspath(osc_backup.__file__))

#: the floors, lowest first; a module may import its own floor or lower
COMMON, PROCEDURES, CLI = 0, 1, 2
FLOOR_NAMES = {COMMON: 'common', PROCEDURES: 'procedures', CLI: 'v1 (cliff)'}


def floor(module: str) -> int | None:
    """The floor of ``module``; None: not ours (or the tests)."""
    parts = module.split('.')
    if parts[0] != PACKAGE or len(parts) == 1:
        return None
    top = parts[1]
    if top == 'tests':
        return None
    if top in ('common', 'i18n'):
        return COMMON
    if top == 'procedures':
        return PROCEDURES
    # v1, command (cliff base classes), plugin (OSC's hook)
    return CLI


def package_modules() -> dict[str, str]:
    """{dotted module name: path} of every module of the package."""
    found = {}
    for directory, dirs, files in os.walk(ROOT):
        rel = os.path.relpath(directory, os.path.dirname(ROOT))
        dirs[:] = [d for d in dirs if d != '__pycache__']
        for name in files:
            if not name.endswith('.py'):
                continue
            dotted = rel.replace(os.sep, '.')
            if name != '__init__.py':
                dotted += '.' + name[:-3]
            found[dotted] = os.path.join(directory, name)
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def imports(
    module: str, source: str, known: set[str], is_package: bool = False
) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import;
    ``is_package``: ``module`` is a package's ``__init__``."""
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    # imports in a module-level if/try block are module level too, but
    # not those under ``if TYPE_CHECKING:`` (never run: no import cycle)
    for node in tree.body:
        if isinstance(node, ast.If) and _type_checking(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            top_level.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = module.split('.')
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            names = []
            for alias in node.names:
                candidate = f'{base}.{alias.name}'
                names.append(candidate if candidate in known else base)
        else:
            continue
        for name in names:
            found.append((name, node.lineno, id(node) in top_level))
    return found


def upward(
    module: str, source: str, known: set[str], is_package: bool = False
) -> list[str]:
    """One line per import of ``module`` that climbs a floor."""
    own = floor(module)
    if own is None:
        return []
    bad = []
    for name, line, _ in imports(module, source, known, is_package):
        target = floor(name)
        if target is not None and target > own:
            bad.append(
                f'{module}:{line} ({FLOOR_NAMES[own]}) imports {name} '
                f'({FLOOR_NAMES[target]})'
            )
    return bad


def read(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


class TestLayers(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.modules = package_modules()
        self.known = set(self.modules)

    def test_floors_known(self):
        for name in ('osc_backup.common.transfer',
                     'osc_backup.common.backup_set',
                     'osc_backup.procedures.image_save',
                     'osc_backup.procedures.image_restore',
                     'osc_backup.v1.image'):
            self.assertIn(name, self.known)
        self.assertNotIn('osc_backup.download', self.known)
        self.assertNotIn('osc_backup.procedures.image_sets', self.known)

    def test_no_import_climbs(self):
        bad = []
        for module, path in sorted(self.modules.items()):
            bad += upward(module, read(path), self.known,
                          path.endswith('__init__.py'))
        self.assertEqual([], bad)

    def test_no_module_level_cycle(self):
        graph = {
            module: {
                name for name, _, top in imports(
                    module, read(path), self.known,
                    path.endswith('__init__.py'))
                if top and name in self.known and name != module
                and floor(name) is not None
            }
            for module, path in self.modules.items()
            if floor(module) is not None
        }
        state: dict[str, int] = {}
        cycles = []

        def visit(node, stack):
            state[node] = 1
            for nxt in sorted(graph.get(node, ())):
                if state.get(nxt) == 1:
                    cycles.append(' -> '.join(
                        [*stack[stack.index(nxt):], nxt]))
                elif nxt not in state:
                    visit(nxt, [*stack, nxt])
            state[node] = 2

        for node in sorted(graph):
            if node not in state:
                visit(node, [node])
        self.assertEqual([], cycles)

    # the checker itself catches what it must
    def check(self, module, source):
        known = self.known | {module}
        return upward(module, source, known)

    def test_checker_finds_function_level_climb(self):
        src = (
            'def f():\n'
            '    from osc_backup.procedures import image_save\n'
        )
        self.assertEqual(
            ['osc_backup.common.x:2 (common) imports '
             'osc_backup.procedures.image_save (procedures)'],
            self.check('osc_backup.common.x', src))

    def test_checker_finds_procedure_importing_cli(self):
        for src in ('from osc_backup import command\n',
                    'import osc_backup.v1.image\n',
                    'from osc_backup.v1 import image\n',
                    'from ..v1 import image\n',
                    'class A:\n    def m(self):\n'
                    '        from osc_backup.v1.image import SaveImage\n'):
            self.assertEqual(
                1, len(self.check('osc_backup.procedures.x', src)), src)

    def test_checker_allows_downward_and_sideways(self):
        src = (
            'from osc_backup.common import errors\n'
            'from osc_backup.procedures import secrets\n'
            'from . import image_save\n'
            'import json\n'
            'def f():\n    from osc_backup.common import waits\n'
        )
        self.assertEqual([], self.check('osc_backup.procedures.x', src))
        self.assertEqual([], self.check(
            'osc_backup.v1.x', 'from osc_backup.procedures import x\n'))

    def test_type_checking_imports_climb_but_are_not_run(self):
        src = (
            'from typing import TYPE_CHECKING\n'
            'if TYPE_CHECKING:\n'
            '    from osc_backup.v1 import image\n'
            '    from osc_backup.procedures import y\n'
        )
        known = self.known | {'osc_backup.procedures.x',
                              'osc_backup.procedures.y'}
        self.assertEqual(
            1, len(upward('osc_backup.procedures.x', src, known)))
        self.assertEqual(
            [('osc_backup.v1.image', 3, False),
             ('osc_backup.procedures.y', 4, False)],
            [i for i in imports('osc_backup.procedures.x', src, known)
             if i[0].startswith('osc_backup.')])
