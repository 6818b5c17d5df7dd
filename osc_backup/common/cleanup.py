#   Licensed under the Apache License, Version 2.0 (the "License"); you may
#   not use this file except in compliance with the License. You may obtain
#   a copy of the License at
#
#        http://www.apache.org/licenses/LICENSE-2.0
#
#   Unless required by applicable law or agreed to in writing, software
#   distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#   WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#   License for the specific language governing permissions and limitations
#   under the License.

"""The one cleanup mechanism: a stack of undo actions.

A procedure registers an undo action for every resource it creates, right
after the create call returns. The stack runs in reverse order:

* on success, for temporary resources (snapshots, intermediate volumes);
* on any exception, for temporary resources *and* partial results;
* on SIGINT / SIGTERM, which are turned into an exception so the same path
  runs (a second signal during cleanup is noted and ignored: every cleanup
  wait is bounded).

If an undo action fails, the run ends non-zero with the IDs left behind
and the exact commands that remove them. ``keep_temporary`` keeps the
temporary resources (for debugging) and says how to remove them later.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from osc_backup.common import errors
from osc_backup.common.progress import Reporter

LOG = logging.getLogger(__name__)

TEMPORARY = 'temporary'
PARTIAL = 'partial'


@dataclass
class Undo:
    """One registered undo action."""

    description: str
    action: Callable[[], None]
    #: what is left if the action fails, e.g. ``volume 4f1c...``
    leftover: str
    #: the exact command that removes it by hand
    remove_command: str
    #: TEMPORARY: always undone; PARTIAL: undone only if the run fails
    when: str = TEMPORARY


class Cleanup:
    def __init__(
        self,
        reporter: Reporter,
        *,
        keep_temporary: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.reporter = reporter
        self.keep_temporary = keep_temporary
        self.run_id = run_id
        self._stack: list[Undo] = []
        self._saved_handlers: dict[int, Any] = {}
        self._in_cleanup = False
        #: > 0 while a resource is being created (see creating())
        self._holding = 0
        self._held: str | None = None
        #: set by a procedure once its result exists, so that a cleanup
        #: failure after success still tells the user what was made
        self.outcome: str | None = None

    # -- registration -------------------------------------------------
    def add(
        self,
        description: str,
        action: Callable[[], None],
        *,
        leftover: str,
        remove_command: str,
        when: str = TEMPORARY,
    ) -> None:
        self._stack.append(
            Undo(description, action, leftover, remove_command, when)
        )

    def remove_image_on_failure(self, image_proxy: Any, image_id: str) -> None:
        """An image being made is deleted if the run fails."""
        self.add(
            f'delete incomplete image {image_id}',
            lambda: image_proxy.delete_image(image_id, ignore_missing=True),
            leftover=f'image {image_id}',
            remove_command=f'openstack image delete {image_id}',
            when=PARTIAL,
        )

    @property
    def pending(self) -> list[Undo]:
        return list(self._stack)

    # -- signals ------------------------------------------------------
    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._holding:
            # raised by creating() once the new resource is registered
            self._held = name
            return
        if self._in_cleanup:
            self.reporter.note(
                f'{name} received during cleanup: finishing cleanup first '
                '(every step is bounded).'
            )
            return
        raise errors.Interrupted(name)

    def _install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._saved_handlers[sig] = signal.signal(
                    sig, self._on_signal
                )
            except ValueError:  # not in the main thread
                LOG.debug('Cannot install handler for %s', sig)

    def _restore_signals(self) -> None:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        self._saved_handlers.clear()

    # -- running ------------------------------------------------------
    def run(self, *, failed: bool) -> list[Undo]:
        """Run the stack (LIFO); return what could not be removed."""
        self._in_cleanup = True
        left: list[Undo] = []
        kept: list[Undo] = []
        try:
            while self._stack:
                undo = self._stack.pop()
                if undo.when == PARTIAL and not failed:
                    continue
                if undo.when == TEMPORARY and self.keep_temporary:
                    kept.append(undo)
                    continue
                self.reporter.step(f'Cleanup: {undo.description}')
                try:
                    undo.action()
                except Exception as exc:
                    LOG.debug('Cleanup step failed', exc_info=True)
                    self.reporter.warn(
                        f'Cleanup failed: {undo.description}: {exc}'
                    )
                    left.append(undo)
        finally:
            self._in_cleanup = False
        if kept:
            self.reporter.note(
                'Kept temporary resources (--keep-temporary); remove them '
                'with:\n' + '\n'.join(f'  {u.remove_command}' for u in kept)
            )
        return left

    def leftover_message(self, left: list[Undo]) -> str:
        lines = [
            'Cleanup could not remove '
            + ', '.join(u.leftover for u in left)
            + '. Remove them with:'
        ]
        lines += [f'  {u.remove_command}' for u in left]
        if self.run_id and any(u.when == TEMPORARY for u in left):
            lines.append(
                f'  (or: openstack backup cleanup --run-id {self.run_id})'
            )
        return '\n'.join(lines)

    @contextlib.contextmanager
    def creating(self) -> Iterator[None]:
        """Hold SIGINT/SIGTERM while a resource is created and its undo
        registered.

        A signal that interrupted the create call after the cloud had
        made the resource, but before the undo was added, would leave a
        resource nobody removes. A held signal is raised as
        :class:`errors.Interrupted` right after the block, also when the
        block failed (the user's interrupt wins over a fall-back).
        """
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding and self._held:
                name, self._held = self._held, None
                raise errors.Interrupted(name)

    @contextlib.contextmanager
    def guard(self) -> Iterator[Cleanup]:
        """Run the body; always clean up afterwards.

        Signals become :class:`errors.Interrupted` inside the body. If the
        cleanup leaves something behind, a :class:`errors.CleanupError`
        names it (chained to the body's error, if any).
        """
        self._install_signals()
        try:
            try:
                yield self
            except BaseException as exc:
                left = self.run(failed=True)
                if left:
                    message = self.leftover_message(left)
                    if isinstance(exc, KeyboardInterrupt):
                        self.reporter.note(message)
                        raise
                    raise errors.CleanupError(f'{exc}\n{message}') from exc
                raise
            left = self.run(failed=False)
            if left:
                made = f' ({self.outcome})' if self.outcome else ''
                raise errors.CleanupError(
                    f'The backup succeeded{made}, but '
                    + self.leftover_message(left)
                )
        finally:
            self._restore_signals()
