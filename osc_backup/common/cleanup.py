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
after the create call returns (inside :meth:`Cleanup.creating`, which holds
signals meanwhile). The stack runs in reverse order:

* on success, for temporary resources (snapshots, intermediate volumes);
* on any exception, for temporary resources *and* partial results;
* on SIGINT / SIGTERM, which are turned into an exception so the same path
  runs.

Bounds. Each undo action waits at most ``timeout`` seconds in all
(``--cleanup-timeout``, :data:`DEFAULT_TIMEOUT` by default; every wait in
:mod:`~osc_backup.common.waits` inside it is capped), and gives up at once
when the cloud fails the deletion (``error_deleting``).

Signals. The first SIGINT/SIGTERM stops the run and cleans up, saying so
on stderr. A second one stops waiting: the undo in progress is abandoned,
the rest are not started, and what is left is printed with the commands
that remove it; the run ends with :class:`errors.Interrupted` for that
signal (exit status 130 for SIGINT, 143 for SIGTERM). Signals are counted
per process, across nested guards.

Worker threads. Signals reach only the main thread. A command that runs
procedures in worker threads (``backup run --parallel``) wraps them in
:func:`cancelling`: its main thread's handler sets a
:class:`waits.Cancellation` instead of raising, and each worker's waits
raise :class:`errors.Interrupted` within one poll, so the worker's own
stack runs as above. The same two signals apply: the first stops the work
and cleans up, the second stops the cleanups' waits and lists what is
left. A guard in a worker thread takes no part in signal dispatch.

If an undo action fails, the run ends non-zero with what is left and the
exact, shell-quoted commands that remove it. ``keep_temporary`` keeps the
temporary resources (for debugging) and says how to remove them later.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import shlex
import signal
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from osc_backup.common import errors
from osc_backup.common import waits
from osc_backup.common.progress import Reporter
from osc_backup.common.text import printable

LOG = logging.getLogger(__name__)

TEMPORARY = 'temporary'
PARTIAL = 'partial'
#: undone on success, failure and interrupt, even with keep_temporary
#: (e.g. unpausing a server the run paused)
ALWAYS = 'always'

#: seconds one undo action may take, unless the command says otherwise
DEFAULT_TIMEOUT = 120.0
#: the option that sets it, named in messages
TIMEOUT_OPTION = '--cleanup-timeout'

_default_timeout: contextvars.ContextVar[float] = contextvars.ContextVar(
    'osc_backup_cleanup_timeout', default=DEFAULT_TIMEOUT
)


@contextlib.contextmanager
def default_timeout(seconds: float | None) -> Iterator[None]:
    """A :class:`Cleanup` made inside the block bounds each undo action by
    ``seconds`` (``None``: unchanged). The command layer wraps every verb
    in it with ``--cleanup-timeout``, so procedures need not pass it on."""
    if seconds is None:
        yield
        return
    token = _default_timeout.set(float(seconds))
    try:
        yield
    finally:
        _default_timeout.reset(token)


def shell_command(*argv: str) -> str:
    """``argv`` as one command line a POSIX shell runs as given."""
    return ' '.join(shlex.quote(str(a)) for a in argv)


@dataclass
class Undo:
    """One registered undo action."""

    description: str
    action: Callable[[], None]
    #: what is left if the action fails, e.g. ``volume 4f1c...``
    leftover: str
    #: the exact command that removes it by hand (shell-quoted)
    remove_command: str
    #: TEMPORARY: always undone (kept with keep_temporary); PARTIAL:
    #: undone only if the run fails; ALWAYS: always undone
    when: str = TEMPORARY


class _Signals:
    """Process-wide signal state: signals are per process, and guards nest
    (a server backup runs one per disk)."""

    def __init__(self) -> None:
        #: names of the signals received while a guard was active
        self.received: list[str] = []
        #: the active guards, innermost last
        self.guards: list[Cleanup] = []
        self.saved: dict[int, Any] = {}
        #: the signal that said "stop waiting" (the second one)
        self.stop: str | None = None
        #: the run whose workers a signal cancels (see cancelling())
        self.scope: _Scope | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.saved[sig] = signal.signal(sig, _on_signal)
            except ValueError:  # not in the main thread
                LOG.debug('Cannot install handler for %s', sig)

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        self.saved.clear()
        self.received.clear()
        self.stop = None


_SIGNALS = _Signals()


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    name = signal.Signals(signum).name
    _SIGNALS.received.append(name)
    if _SIGNALS.scope is not None:
        _SIGNALS.scope.signalled(name)
        return
    if not _SIGNALS.guards:  # pragma: no cover - installed only with one
        raise errors.Interrupted(name)
    _SIGNALS.guards[-1]._signalled(name)


def _say(reporter: Reporter, message: str) -> None:
    """A note from the signal handler: never let it fail the run."""
    try:
        reporter.note(message)
    except (OSError, RuntimeError, ValueError):  # pragma: no cover
        LOG.debug('Could not write a note from the signal handler')


class Cleanup:
    def __init__(
        self,
        reporter: Reporter,
        *,
        keep_temporary: bool = False,
        run_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.reporter = reporter
        self.keep_temporary = keep_temporary
        self.run_id = run_id
        #: seconds one undo action may take (``--cleanup-timeout``)
        self.timeout = (
            float(timeout) if timeout is not None else _default_timeout.get()
        )
        self._stack: list[Undo] = []
        self._in_cleanup = False
        #: True while an undo action runs: a second signal stops it there
        self._in_action = False
        #: > 0 while a resource is being created (see creating())
        self._holding = 0
        self._held: str | None = None
        #: a first signal that came while the stack was already running
        self._late: str | None = None
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
        remove_command: str | Sequence[str],
        when: str = TEMPORARY,
    ) -> Undo:
        """Register the undo of a resource just created; returns it (for
        :meth:`drop` and :meth:`move_up`).

        :param remove_command: the command that removes it by hand: an
            argument list (quoted here for the shell; preferred) or a
            complete command line (used as given).
        """
        if not isinstance(remove_command, str):
            remove_command = shell_command(*remove_command)
        undo = Undo(description, action, leftover, remove_command, when)
        self._stack.append(undo)
        return undo

    def drop(self, undo: Undo) -> None:
        """No longer undo ``undo``: its resource is a result of the run
        now (or is gone)."""
        if undo in self._stack:
            self._stack.remove(undo)

    def move_up(self, undo: Undo) -> None:
        """Run ``undo`` before every action registered so far (e.g. give a
        paused server back before the snapshots taken meanwhile are
        deleted)."""
        self.drop(undo)
        self._stack.append(undo)

    def remove_image_on_failure(self, image_proxy: Any, image_id: str) -> Undo:
        """An image being made is deleted if the run fails."""
        return self.add(
            f'delete incomplete image {image_id}',
            lambda: image_proxy.delete_image(image_id, ignore_missing=True),
            leftover=f'image {image_id}',
            remove_command=['openstack', 'image', 'delete', image_id],
            when=PARTIAL,
        )

    @property
    def pending(self) -> list[Undo]:
        return list(self._stack)

    # -- signals ------------------------------------------------------
    def _say(self, message: str) -> None:
        _say(self.reporter, message)

    def _signalled(self, name: str) -> None:
        """Called by the signal handler; may raise :class:`Interrupted`."""
        if len(_SIGNALS.received) == 1:
            # a creation held by this guard or by an enclosing one (a
            # resource made inside a nested guard may be registered with
            # the outer one)
            holder = next(
                (g for g in reversed(_SIGNALS.guards) if g._holding), None
            )
            if holder is not None:
                # raised by creating() once the new resource is registered
                holder._held = name
                return
            if self._in_cleanup:
                self._late = name
                self._say(
                    f'{name} received: finishing the cleanup first (each '
                    f'step waits at most {self.timeout:g}s, '
                    f'{TIMEOUT_OPTION}). Press Ctrl-C again to stop '
                    'waiting and leave what is not removed yet.'
                )
                return
            raise errors.Interrupted(name)
        # a second signal: stop waiting
        if _SIGNALS.stop is not None:
            return
        _SIGNALS.stop = name
        if self._in_action:
            raise errors.Interrupted(name)
        # otherwise the run is already stopping (or holding a creation):
        # run() sees the flag and starts no more undo actions

    # -- running ------------------------------------------------------
    def _due(self, undo: Undo, failed: bool) -> bool:
        return undo.when != PARTIAL or failed

    def run(self, *, failed: bool) -> list[Undo]:
        """Run the stack (LIFO); return what could not be removed.

        After a second signal, the action in progress and those not yet
        started are returned as left (see :attr:`stopped`).
        """
        self._in_cleanup = True
        left: list[Undo] = []
        kept: list[Undo] = []
        try:
            while self._stack and _SIGNALS.stop is None:
                undo = self._stack[-1]
                if not self._due(undo, failed):
                    self._stack.pop()
                    continue
                if undo.when == TEMPORARY and self.keep_temporary:
                    kept.append(self._stack.pop())
                    continue
                self.reporter.step(f'Cleanup: {undo.description}')
                try:
                    self._in_action = True
                    with waits.capped(self.timeout, TIMEOUT_OPTION), \
                            waits.shielded():
                        undo.action()
                except errors.Interrupted:
                    if _SIGNALS.stop is None:
                        raise
                    break  # stays on the stack: listed below
                except Exception as exc:
                    LOG.debug('Cleanup step failed', exc_info=True)
                    self.reporter.warn(
                        f'Cleanup failed: {undo.description}: '
                        f'{errors.describe(exc)}'
                    )
                    left.append(undo)
                finally:
                    self._in_action = False
                self._stack.pop()
        finally:
            self._in_cleanup = False
        if _SIGNALS.stop is not None:
            for undo in reversed(self._stack):
                if not self._due(undo, failed):
                    continue
                if undo.when == TEMPORARY and self.keep_temporary:
                    kept.append(undo)
                else:
                    left.append(undo)
            self._stack.clear()
        if kept:
            lines = [f'  {u.remove_command}' for u in kept]
            if self.run_id:
                lines.append('  (or: ' + self._cleanup_command() + ')')
            self.reporter.note(
                'Kept temporary resources (--keep-temporary); remove them '
                'with:\n' + '\n'.join(lines)
            )
        return left

    @property
    def stopped(self) -> str | None:
        """The signal that stopped the waiting (a second signal), if any."""
        return _SIGNALS.stop

    def leftover_message(self, left: list[Undo]) -> str:
        what = ', '.join(printable(u.leftover) for u in left)
        if self.stopped:
            head = (
                f'{self.stopped} received again: stopped waiting. Not '
                f'removed: {what}. Remove them with:'
                if left
                else f'{self.stopped} received again: stopped waiting; '
                'nothing of this run is left.'
            )
        else:
            head = f'Cleanup could not remove {what}. Remove them with:'
        lines = [head]
        lines += [f'  {u.remove_command}' for u in left]
        if self.run_id and any(u.when == TEMPORARY for u in left):
            lines.append('  (or: ' + self._cleanup_command() + ')')
        return '\n'.join(lines)

    def _cleanup_command(self) -> str:
        """``openstack backup cleanup --run-id <run>``, quoted."""
        assert self.run_id is not None
        return shell_command(
            'openstack', 'backup', 'cleanup', '--run-id', self.run_id
        )

    @contextlib.contextmanager
    def creating(self) -> Iterator[None]:
        """Hold SIGINT/SIGTERM while a resource is created and its undo
        registered.

        A signal that interrupted the create call after the cloud had
        made the resource, but before the undo was added, would leave a
        resource nobody removes. A held signal is raised as
        :class:`errors.Interrupted` right after the block, also when the
        block failed (the user's interrupt wins over a fall-back). Every
        API call has a finite timeout (see ``osc_backup.command``), so the
        hold is bounded too.
        """
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding and self._held:
                name, self._held = self._held, None
                raise errors.Interrupted(name)

    def _announce(self, exc: KeyboardInterrupt) -> None:
        """Say on stderr that the run stops and what happens now."""
        due = [
            u for u in self._stack
            if not (u.when == TEMPORARY and self.keep_temporary)
        ]
        if not due or _SIGNALS.stop is not None:
            return
        name = getattr(exc, 'signame', 'SIGINT')
        self.reporter.note(
            f'{name} received: stopping and removing what this run '
            f'created ({len(due)} step(s), each waiting at most '
            f'{self.timeout:g}s). Press Ctrl-C again to stop waiting; '
            'what is left is then listed with the commands that remove it.'
        )

    @contextlib.contextmanager
    def guard(self) -> Iterator[Cleanup]:
        """Run the body; always clean up afterwards.

        Signals become :class:`errors.Interrupted` inside the body. If the
        cleanup leaves something behind, a :class:`errors.CleanupError`
        names it (chained to the body's error, if any); after a second
        signal, the leftovers are printed and :class:`errors.Interrupted`
        for that signal is raised.
        """
        # only the main thread gets signals; a worker's guard learns of
        # them from its waits (see cancelling())
        main = threading.current_thread() is threading.main_thread()
        if main:
            if not _SIGNALS.guards and _SIGNALS.scope is None:
                _SIGNALS.install()
            _SIGNALS.guards.append(self)
        try:
            try:
                yield self
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt) and main:
                    self._announce(exc)
                left = self.run(failed=True)
                stop = self.stopped
                if stop is not None:
                    self.reporter.note(self.leftover_message(left))
                    if isinstance(exc, errors.Interrupted) and (
                        exc.signame == stop
                    ):
                        raise
                    # still naming the complete backups kept
                    raise errors.keeping(exc, signame=stop) from exc
                if left:
                    message = self.leftover_message(left)
                    if isinstance(exc, KeyboardInterrupt):
                        self.reporter.note(message)
                        raise
                    raise errors.CleanupError(f'{exc}\n{message}') from exc
                raise
            left = self.run(failed=False)
            made = f' ({self.outcome})' if self.outcome else ''
            stop = self.stopped or self._late
            if stop is not None:
                if self.outcome:
                    self.reporter.note(f'The backup was made{made}.')
                if left or self.stopped:
                    self.reporter.note(self.leftover_message(left))
                raise errors.Interrupted(stop)
            if left:
                raise errors.CleanupError(
                    f'The backup succeeded{made}, but '
                    + self.leftover_message(left)
                )
        finally:
            if main:
                _SIGNALS.guards.remove(self)
                if not _SIGNALS.guards and _SIGNALS.scope is None:
                    _SIGNALS.restore()


class _Scope:
    """The main thread's side of :func:`cancelling`."""

    def __init__(self, token: waits.Cancellation, reporter: Reporter) -> None:
        self.token = token
        self.reporter = reporter

    def _say(self, message: str) -> None:
        _say(self.reporter, message)

    def signalled(self, name: str) -> None:
        if not self.token.cancelled:
            self.token.cancel(name)
            self._say(
                f'{name} received: starting nothing more; what is in '
                'progress stops and removes what it created (each step '
                f'waiting at most {_default_timeout.get():g}s, '
                f'{TIMEOUT_OPTION}). Press Ctrl-C again to stop waiting; '
                'what is left is then listed with the commands that '
                'remove it.'
            )
        elif not self.token.stopped:
            _SIGNALS.stop = name
            self.token.stop_waiting(name)


@contextlib.contextmanager
def cancelling(
    token: waits.Cancellation, reporter: Reporter
) -> Iterator[waits.Cancellation]:
    """Run worker threads' procedures under ``token`` (main thread only).

    SIGINT/SIGTERM no longer raise in the main thread: the first cancels
    ``token`` (workers stop at their next poll and clean up; the caller
    starts nothing more), the second also stops the cleanups' waits. The
    caller passes ``token`` on to its workers with
    :func:`waits.cancellable` and, once they are done, reports
    ``token.signame`` as the run's end (exit status 128 + signal).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError('cancelling() belongs to the main thread')
    if _SIGNALS.scope is not None or _SIGNALS.guards:
        raise RuntimeError('cancelling() cannot be nested in a guard')
    _SIGNALS.scope = _Scope(token, reporter)
    _SIGNALS.install()
    try:
        with waits.cancellable(token):
            yield token
    finally:
        _SIGNALS.scope = None
        _SIGNALS.restore()
