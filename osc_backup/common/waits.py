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
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc

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

DEFAULT_INTERVAL = 2.0

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
    """A dropped connection or a gateway error: worth polling again."""
    if isinstance(exc, ks_exc.ConnectFailure):
        return True
    code = getattr(exc, 'status_code', None)
    return isinstance(exc, sdk_exc.HttpException) and code in (
        502,
        503,
        504,
    )


def _riding_out_blips(
    call: Callable[[int], T],
    timeout: float | Deadline,
    interval: float,
    lost: str,
) -> T:
    """Run one SDK wait; if a poll hits a transient error, poll again.

    A long wait makes hundreds of requests; one of them meeting a
    keep-alive connection the server is just closing, or a load balancer's
    502, must not end a run that holds temporary resources. At most
    ``TRANSIENT_RETRIES`` such errors in a row, and never past the budget.
    """
    deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout)
    blips = 0
    while True:
        try:
            return call(max(1, round(deadline.remaining())))
        except Exception as exc:
            if not _is_transient(exc):
                raise
            blips += 1
            if blips > TRANSIENT_RETRIES or deadline.remaining() <= interval:
                raise errors.WaitError(f'{lost}: {exc}') from exc
            LOG.debug('Transient error while polling (%d): %s', blips, exc)
            time.sleep(interval)


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
    interval: float = DEFAULT_INTERVAL,
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
    # Start from the cloud's view: openstacksdk returns at once when the
    # object in hand already shows ``status`` (e.g. a volume fetched before
    # its upload started still says 'available').
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
        return _riding_out_blips(  # type: ignore[no-any-return]
            lambda left: proxy.wait_for_status(
                resource,
                status=status,
                failures=failures,
                interval=interval,
                wait=left,
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
    interval: float = DEFAULT_INTERVAL,
) -> None:
    """Wait until ``resource`` is gone (404); bounded.

    Call it after the delete request: a status in
    :data:`DELETE_FAILURES` (``error_deleting``) means the cloud gave up
    on the deletion, and the wait ends at once with
    :class:`errors.DeleteFailed`.

    :raises DeleteFailed: the cloud could not delete it.
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

    try:
        _riding_out_blips(
            lambda left: proxy.wait_for_delete(
                resource, interval=interval, wait=left, callback=check
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


def cli_noun(kind: str) -> str:
    """The ``openstack`` CLI noun for a kind of resource."""
    return {
        'volume': 'volume',
        'snapshot': 'volume snapshot',
        'backup': 'volume backup',
        'image': 'image',
    }.get(kind, kind)
