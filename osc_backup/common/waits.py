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

"""The one waiting helper: bounded waits with failure states.

Built on openstacksdk's ``wait_for_status`` / ``wait_for_delete`` (which
every proxy has). Every wait is bounded; a failure state or a timeout
becomes an error that names the step, the resource, its status and any
fault message the cloud recorded (Cinder's user messages included).

Two bounds apply to a wait: its own ``timeout`` (a number of seconds or a
:class:`Deadline` shared by a run, from ``--timeout``) and, inside a
:func:`capped` block, the cap of that block (the cleanup stack caps each
undo action with ``--cleanup-timeout``). The earlier end wins, and the
timeout message names the option that set it.

A deletion the cloud accepted but then failed (Cinder's ``error_deleting``;
``error`` for a backup) ends the wait at once: waiting longer cannot help.

Polling policy
--------------
One policy for every wait (:func:`poll_interval`): poll at once, then every
:data:`FIRST_INTERVAL` (0.2 s); once the wait has lasted longer, every
:data:`GROWTH` (a tenth) of the time waited so far, up to
:data:`MAX_INTERVAL` (5 s). A step that takes the cloud ``T`` seconds is
therefore seen done at most about ``T/10`` (and never more than 5 s) after
it happened, where a fixed 2 s tick cost up to 2 s per step, and the
request rate falls as a wait goes on: about 10 requests in the first 2 s,
about 50 in the first minute, then 12 per minute (about 760 requests for a
wait of an hour).

Cancellation
------------
Signals reach only the main thread. A command that runs procedures in
worker threads (``backup run --parallel``) gives them a
:class:`Cancellation` (:func:`cancellable`); its main thread's signal
handler sets it. The first signal stops work: every wait of a worker
raises :class:`errors.Interrupted` within one poll, so the worker's own
cleanup stack runs, exactly as a single command's does on Ctrl-C. The
waits of that cleanup (inside :func:`shielded`) go on; only a second
signal stops them too ("stop waiting"). Without a cancellation in
context (the single verbs, in the main thread), waits behave as before.

The polling itself is openstacksdk's ``wait_for_status`` /
``wait_for_delete`` (fetch, compare, failure states), called for windows
of :data:`POLLS_PER_WINDOW` polls at one interval; the interval is
recomputed between windows. Callers may pass a fixed ``interval`` instead
(tests do).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc
from openstack import utils as sdk_utils

from osc_backup.common import errors
from osc_backup.common.text import printable

LOG = logging.getLogger(__name__)

T = TypeVar('T')

#: Statuses that end a wait with an error, per kind of resource.
#: openstacksdk compares exact (lower-cased) names, so the ``error_*``
#: family is spelled out.
FAILURES: dict[str, list[str]] = {
    'volume': [
        'error',
        'error_restoring',
        'error_extending',
        'error_managing',
        'error_deleting',
        'error_backing-up',
        'deleted',
    ],
    'snapshot': ['error', 'error_deleting', 'deleted'],
    'backup': ['error', 'error_deleting', 'error_restoring', 'deleted'],
    'image': ['killed', 'deleted', 'pending_delete', 'deactivated'],
}

#: Statuses in which a deletion the cloud accepted has failed: Cinder marks
#: a volume or snapshot it could not delete ``error_deleting``, and a
#: backup ``error`` (its API sets ``deleting`` before it answers, so a
#: status seen after the delete call is the outcome of that call).
DELETE_FAILURES: dict[str, list[str]] = {
    'volume': ['error_deleting'],
    'snapshot': ['error_deleting'],
    'backup': ['error_deleting', 'error'],
}

#: The Block Storage microversion that has user messages (``/messages``).
#: openstacksdk's Message resource names none, so without it the request
#: goes out as 3.0 and Cinder answers 404.
MESSAGES_MICROVERSION = '3.3'

#: ``interval`` for the adaptive policy (:func:`poll_interval`)
DEFAULT_INTERVAL: float | None = None
#: the first polls' interval, seconds
FIRST_INTERVAL = 0.2
#: later, the interval is this fraction of the time waited so far...
GROWTH = 0.1
#: ...but never more than this, seconds
MAX_INTERVAL = 5.0
#: polls per call of openstacksdk's wait (the interval is fixed within one)
POLLS_PER_WINDOW = 5
#: a deadline closer than this is a deadline reached
_NO_TIME = 0.05

#: transient errors (dropped connections, 502/503/504) ridden out in a row
TRANSIENT_RETRIES = 5

#: the option that sets a wait's own timeout, for messages
TIMEOUT_OPTION = '--timeout'


class Deadline:
    """An overall time budget shared by the waits of one run."""

    def __init__(
        self, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._end = clock() + timeout

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())


@dataclass(frozen=True)
class _Cap:
    deadline: Deadline
    #: the option that sets it, named in timeout messages
    option: str


_CAP: contextvars.ContextVar[_Cap | None] = contextvars.ContextVar(
    'osc_backup_wait_cap', default=None
)


@contextlib.contextmanager
def capped(seconds: float, option: str) -> Iterator[Deadline]:
    """Every wait inside the block ends at most ``seconds`` from now.

    Nested blocks keep the earlier end. ``option`` is what the user raises
    to allow more time (e.g. ``--cleanup-timeout``); timeout messages of
    the waits this cap cuts short name it.
    """
    cap = _Cap(Deadline(seconds), option)
    outer = _CAP.get()
    if outer is not None and outer.deadline.remaining() <= seconds:
        cap = outer
    token = _CAP.set(cap)
    try:
        yield cap.deadline
    finally:
        _CAP.reset(token)


class Cancellation:
    """A run's cancellation, set from the main thread's signal handler
    and seen by the waits of worker threads (see the module docstring).
    Thread-safe."""

    def __init__(self) -> None:
        #: set by the first signal (and by the second)
        self._work = threading.Event()
        #: set by the second signal: stop waiting, also in cleanups
        self._waiting = threading.Event()
        #: the signals' names, first and second
        self.signame: str | None = None
        self.stop_signame: str | None = None

    def cancel(self, signame: str) -> None:
        """The first signal: stop work, clean up."""
        if self.signame is None:
            self.signame = signame
        self._work.set()

    def stop_waiting(self, signame: str) -> None:
        """The second signal: stop every wait, cleanups' included."""
        if self.stop_signame is None:
            self.stop_signame = signame
        self.cancel(signame)
        self._waiting.set()

    @property
    def cancelled(self) -> bool:
        return self._work.is_set()

    @property
    def stopped(self) -> bool:
        return self._waiting.is_set()

    def check(self, shielded: bool = False) -> None:
        """Raise :class:`errors.Interrupted` when cancelled (in a cleanup,
        ``shielded``: only after the second signal)."""
        if self._waiting.is_set():
            raise errors.Interrupted(self.stop_signame or 'SIGINT')
        if not shielded and self._work.is_set():
            raise errors.Interrupted(self.signame or 'SIGINT')

    def sleep(self, seconds: float, shielded: bool = False) -> None:
        """Sleep ``seconds``, ending early (raising) when cancelled."""
        event = self._waiting if shielded else self._work
        event.wait(max(0.0, seconds))
        self.check(shielded)


_CANCEL: contextvars.ContextVar[Cancellation | None] = (
    contextvars.ContextVar('osc_backup_cancellation', default=None)
)
_SHIELDED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    'osc_backup_wait_shielded', default=False
)


@contextlib.contextmanager
def cancellable(token: Cancellation) -> Iterator[Cancellation]:
    """Waits inside the block end with :class:`errors.Interrupted` when
    ``token`` is cancelled (see the module docstring)."""
    reset = _CANCEL.set(token)
    try:
        yield token
    finally:
        _CANCEL.reset(reset)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Waits inside the block (a cleanup's) ignore the first signal of a
    :class:`Cancellation`; only a second one stops them."""
    reset = _SHIELDED.set(True)
    try:
        yield
    finally:
        _SHIELDED.reset(reset)


def check_cancelled() -> None:
    """Raise :class:`errors.Interrupted` if the run in context was
    cancelled (for loops of a worker that do not wait: call between
    steps). Nothing without a :class:`Cancellation` in context."""
    token = _CANCEL.get()
    if token is not None:
        token.check(_SHIELDED.get())


def cancelled() -> bool:
    """Whether the run in context was told to stop (first signal)."""
    token = _CANCEL.get()
    return token is not None and token.cancelled


def _bound(timeout: float | Deadline) -> tuple[Deadline, float, str]:
    """The deadline a wait must meet, the seconds it has now, and the
    option that sets that deadline."""
    if isinstance(timeout, Deadline):
        own, budget = timeout, timeout.remaining()
    else:
        own, budget = Deadline(timeout), float(timeout)
    cap = _CAP.get()
    if cap is not None:
        capped_budget = cap.deadline.remaining()
        if capped_budget < budget:
            return cap.deadline, capped_budget, cap.option
    return own, budget, TIMEOUT_OPTION


def _fault(proxy: Any, resource: Any) -> str:
    """Best effort: what the cloud says went wrong with ``resource``."""
    for attr in ('fail_reason', 'fault', 'message'):
        value = getattr(resource, attr, None)
        if value:
            if isinstance(value, dict):
                value = value.get('message') or value
            return printable(value)
    return user_message(proxy, getattr(resource, 'id', resource))


def user_message(proxy: Any, resource_id: str) -> str:
    """The newest Cinder user message about ``resource_id``, or ''.

    Cinder records why an asynchronous operation failed (``No valid
    backend was found``...) as a user message, available from Block
    Storage microversion 3.3 on. The request is made directly: the SDK's
    ``messages()`` exists only from openstacksdk 4.16 (our floor is older)
    and sends no microversion by itself (Cinder then answers 404).
    A failing lookup returns '' (it must never mask the error it explains).
    """
    try:
        resp = proxy.get(
            '/messages',
            params={'sort': 'created_at:desc', 'limit': 50},
            microversion=MESSAGES_MICROVERSION,
        )
        if resp.status_code != 200:
            return ''
        found = [
            msg for msg in resp.json().get('messages') or []
            if isinstance(msg, dict)
            and msg.get('resource_uuid') == resource_id
        ]
    except Exception as exc:  # a fault lookup must never mask the error
        LOG.debug('Could not read Cinder user messages: %s', exc)
        return ''
    if not found:
        return ''
    newest = max(found, key=lambda m: str(m.get('created_at') or ''))
    return printable(str(newest.get('user_message') or ''))


def _is_transient(exc: BaseException) -> bool:
    """A dropped connection, a poll that timed out (an API busy with
    uploads: ``backup run --parallel`` keeps a small Glance's threads
    busy) or a gateway error: worth polling again (a poll is a GET)."""
    if isinstance(exc, ks_exc.ConnectFailure | ks_exc.ConnectTimeout):
        return True
    code = getattr(exc, 'status_code', None)
    return isinstance(exc, sdk_exc.HttpException) and code in (
        502,
        503,
        504,
    )


def poll_interval(elapsed: float) -> float:
    """Seconds between two polls of a wait that has lasted ``elapsed``
    seconds (the module's polling policy)."""
    return min(MAX_INTERVAL, max(FIRST_INTERVAL, elapsed * GROWTH))


def _polling(
    call: Callable[[float, float], T],
    deadline: Deadline,
    interval: float | None,
    lost: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run openstacksdk's wait ``call(interval, window)`` until it ends.

    With ``interval=None`` the wait goes in windows of
    :data:`POLLS_PER_WINDOW` polls, each window at the interval
    :func:`poll_interval` gives for the time waited so far; a fixed
    ``interval`` polls at that pace until the deadline in one call.
    Never past ``deadline``: the last window ends with openstacksdk's
    ``ResourceTimeout``. With a :class:`Cancellation` in context, every
    window is one poll and the sleeps end when it is cancelled.

    A poll that meets a transient error (a keep-alive connection the
    server is just closing, a load balancer's 502) is retried: at most
    ``TRANSIENT_RETRIES`` such errors in a row, and never past the
    deadline. A long wait makes hundreds of requests, and one blip must
    not end a run that holds temporary resources.
    """
    token = _CANCEL.get()
    guarded = _SHIELDED.get()
    if token is not None and sleep is time.sleep:
        # a worker's wait: sleep on the cancellation, so that a signal
        # ends it at once
        def sleep(seconds: float) -> None:
            assert token is not None
            token.sleep(seconds, guarded)

    started = clock()
    blips = 0
    while True:
        if token is not None:
            token.check(guarded)
        left = deadline.remaining()
        if left <= _NO_TIME:
            raise sdk_exc.ResourceTimeout('deadline reached')
        if interval is None:
            step = min(poll_interval(clock() - started), left)
            # a cancellable wait checks between polls: one per window
            polls = POLLS_PER_WINDOW if token is None else 1
            window = min(step * polls, left)
        elif token is not None:
            step = interval
            window = min(float(interval), left)
        else:
            step = interval
            window = float(max(1, round(left)))
        began = clock()
        try:
            return call(step, window)
        except sdk_exc.ResourceTimeout:
            if interval is not None and (
                token is None or deadline.remaining() <= _NO_TIME
            ):
                raise
            blips = 0  # the window's polls went through
            # a window never ends early (that would poll in a busy loop)
            rest = min(began + window - clock(), deadline.remaining())
            if rest > 0:
                sleep(rest)
        except Exception as exc:
            if not _is_transient(exc):
                raise
            blips += 1
            if blips > TRANSIENT_RETRIES or deadline.remaining() <= step:
                raise errors.WaitError(f'{lost}: {exc}') from exc
            LOG.debug('Transient error while polling (%d): %s', blips, exc)
            sleep(step)


def _same_status(current: Any, wanted: str) -> bool:
    return isinstance(current, str) and current.lower() == wanted.lower()


def _refresh(proxy: Any, resource: Any, kind: str) -> Any | None:
    """The resource as the cloud sees it now; None when it is gone."""
    getter = getattr(proxy, f'get_{kind}', None)
    if getter is None:
        return resource
    try:
        return getter(getattr(resource, 'id', resource))
    except sdk_exc.NotFoundException:
        return None
    except Exception as exc:
        LOG.debug('Could not refresh %s %s: %s', kind, resource, exc)
        return resource


def wait_for_status(
    proxy: Any,
    resource: T,
    status: str,
    *,
    kind: str,
    step: str,
    timeout: float | Deadline,
    failures: list[str] | None = None,
    interval: float | None = DEFAULT_INTERVAL,
) -> T:
    """Wait until ``resource`` reaches ``status``; never forever.

    :param proxy: the openstacksdk service proxy owning the resource.
    :param kind: 'volume', 'snapshot', 'backup' or 'image' (for messages
        and for the default failure states).
    :param step: what the run was doing, for the error message.
    :param timeout: seconds, or a :class:`Deadline` shared by the run
        (and never past the end of an enclosing :func:`capped` block).
    :raises WaitError: the resource went to a failure state or vanished.
    :raises WaitTimeout: the time ran out.
    """
    deadline, wait, option = _bound(timeout)
    res_id = printable(getattr(resource, 'id', resource))
    if failures is None:
        failures = FAILURES.get(kind, ['error'])
    if wait <= 0:
        raise errors.WaitTimeout(
            f"Timed out before step '{step}': no time left to wait for "
            f"{kind} {res_id} to become '{status}' (raise {option})."
        )
    # openstacksdk returns at once, without asking the cloud, when the
    # object in hand already shows ``status`` (e.g. a volume fetched before
    # its upload started still says 'available'): then start from the
    # cloud's view. Otherwise its first poll is that view (no extra GET).
    if _same_status(getattr(resource, 'status', None), status):
        fresh = _refresh(proxy, resource, kind)
        if fresh is None:
            raise errors.WaitError(
                f"Step '{step}' failed: {kind} {res_id} disappeared while "
                f"waiting for '{status}'."
            )
        now = getattr(fresh, 'status', None)
        if fresh is not resource and isinstance(now, str):
            resource.status = now  # type: ignore[attr-defined]
    try:
        return _polling(  # type: ignore[no-any-return]
            lambda every, window: proxy.wait_for_status(
                resource,
                status=status,
                failures=failures,
                interval=every,
                wait=window,
            ),
            deadline,
            interval,
            f"Step '{step}' failed: lost contact with the cloud while "
            f"waiting for {kind} {res_id}",
        )
    except sdk_exc.ResourceTimeout:
        current = _refresh(proxy, resource, kind)
        now = getattr(current, 'status', 'unknown') if current else 'gone'
        raise errors.WaitTimeout(
            f"Timed out after {int(wait)}s in step '{step}': {kind} "
            f"{res_id} is '{printable(now)}', expected '{status}' (raise "
            f"{option}, or inspect it with 'openstack {cli_noun(kind)} "
            f"show {res_id}')."
        ) from None
    except sdk_exc.ResourceFailure as exc:
        current = _refresh(proxy, resource, kind)
        if current is None:
            raise errors.WaitError(
                f"Step '{step}' failed: {kind} {res_id} disappeared while "
                f"waiting for '{status}'."
            ) from None
        fault = _fault(proxy, current)
        detail = f': {fault}' if fault else ''
        raise errors.WaitError(
            f"Step '{step}' failed: {kind} {res_id} went to status "
            f"'{printable(getattr(current, 'status', '?'))}'{detail}"
        ) from exc
    except sdk_exc.NotFoundException:
        raise errors.WaitError(
            f"Step '{step}' failed: {kind} {res_id} disappeared while "
            f"waiting for '{status}'."
        ) from None


def wait_for_delete(
    proxy: Any,
    resource: T,
    *,
    kind: str,
    step: str,
    timeout: float | Deadline,
    interval: float | None = DEFAULT_INTERVAL,
    refused: tuple[str, ...] = (),
) -> None:
    """Wait until ``resource`` is gone (404); bounded.

    Call it after the delete request: a status in
    :data:`DELETE_FAILURES` (``error_deleting``) means the cloud gave up
    on the deletion, and the wait ends at once with
    :class:`errors.DeleteFailed`; a status in ``refused`` means it put the
    resource back (e.g. ``available``: Cinder does so with a snapshot its
    driver reports busy), and the wait ends at once with
    :class:`errors.DeleteRefused`.

    :raises DeleteFailed: the cloud could not delete it.
    :raises DeleteRefused: the cloud put it back.
    :raises WaitTimeout: it is still there when the time runs out.
    """
    deadline, wait, option = _bound(timeout)
    res_id = printable(getattr(resource, 'id', resource))
    failed = DELETE_FAILURES.get(kind, [])

    def check(_progress: int) -> None:
        # openstacksdk refreshes ``resource`` in place before each call
        now = getattr(resource, 'status', None)
        if isinstance(now, str) and now.lower() in failed:
            fault = _fault(proxy, resource)
            detail = f': {fault}' if fault else ''
            raise errors.DeleteFailed(
                f"Step '{step}' failed: the cloud could not delete {kind} "
                f"{res_id}, it went to status '{printable(now)}'{detail}"
            )
        if isinstance(now, str) and now.lower() in refused:
            raise errors.DeleteRefused(
                f"Step '{step}' failed: the cloud did not delete {kind} "
                f"{res_id}, it is '{printable(now)}' again"
            )

    try:
        _polling(
            lambda every, window: proxy.wait_for_delete(
                resource, interval=every, wait=window, callback=check
            ),
            deadline,
            interval,
            f"Step '{step}' failed: lost contact with the cloud while "
            f"waiting for {kind} {res_id} to be deleted",
        )
    except sdk_exc.ResourceTimeout:
        current = _refresh(proxy, resource, kind)
        now = getattr(current, 'status', 'unknown') if current else 'gone'
        raise errors.WaitTimeout(
            f"Timed out after {int(wait)}s in step '{step}': {kind} "
            f"{res_id} is still there with status '{printable(now)}' "
            f"(raise {option})."
        ) from None


def wait_until(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    what: str,
    step: str,
    timeout: float | Deadline,
    interval: float | None = DEFAULT_INTERVAL,
) -> T:
    """Poll ``fetch()`` until ``done`` holds for what it returns; bounded,
    with the polling policy and the transient-error tolerance of every
    wait here. For a condition that is not one status (e.g. a server whose
    snapshot task has got past the capture of its disk); ``done`` may
    raise to end the wait with an error.

    :param what: the resource and the condition, for the timeout message.
    :raises WaitTimeout: the time ran out.
    """
    deadline, wait, option = _bound(timeout)
    if wait <= 0:
        raise errors.WaitTimeout(
            f"Timed out before step '{step}': no time left to wait for "
            f'{what} (raise {option}).'
        )
    def window(every: float, seconds: float) -> T:
        for _ in sdk_utils.iterate_timeout(
            seconds, f'waiting for {what}', wait=every
        ):
            current = fetch()
            if done(current):
                return current
        raise AssertionError('unreachable')  # pragma: no cover

    try:
        return _polling(
            window, deadline, interval,
            f"Step '{step}' failed: lost contact with the cloud while "
            f'waiting for {what}',
        )
    except sdk_exc.ResourceTimeout:
        raise errors.WaitTimeout(
            f"Timed out after {int(wait)}s in step '{step}' waiting for "
            f'{what} (raise {option}).'
        ) from None


def cli_noun(kind: str) -> str:
    """The ``openstack`` CLI noun for a kind of resource."""
    return {
        'volume': 'volume',
        'snapshot': 'volume snapshot',
        'backup': 'volume backup',
        'image': 'image',
    }.get(kind, kind)
