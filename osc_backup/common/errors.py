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

"""Errors raised by osc-backup procedures, and how the cloud's are told.

Procedures know nothing of cliff: they raise these, and the command layer
turns them into ``osc_lib.exceptions.CommandError`` (one line on stderr,
non-zero exit). :func:`describe` is the one place that turns an error the
SDK or keystoneauth raised into such a line.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from osc_backup.common.text import printable


class BackupError(Exception):
    """A failure whose message is complete and fit for the user."""


class InvalidInput(BackupError):
    """Bad input, detected before anything was created."""


class WaitError(BackupError):
    """A resource went to a failure state while we waited for it."""


class WaitTimeout(WaitError):
    """A bounded wait ran out of time."""


class DeleteFailed(WaitError):
    """The cloud accepted a deletion, then failed it (``error_deleting``)."""


class DeleteRefused(WaitError):
    """The cloud accepted a deletion, then put the resource back as it was
    (Cinder does so with a snapshot its driver reports busy)."""


class CleanupError(BackupError):
    """Temporary resources could not be removed; the message says how."""


class Interrupted(KeyboardInterrupt):
    """The run was interrupted by SIGINT or SIGTERM.

    ``kept``: the IDs of complete backups the interrupted run made and
    keeps (e.g. an active image whose download was interrupted);
    ``detail``: one line saying so (what to do with them). See
    :func:`keeping`.
    """

    def __init__(
        self, signame: str, *, kept: Sequence[str] = (), detail: str = ''
    ) -> None:
        super().__init__(signame)
        self.signame = signame
        self.kept = list(kept)
        self.detail = detail

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a signal's death:
        130 for SIGINT, 143 for SIGTERM."""
        try:
            return 128 + int(signal.Signals[self.signame])
        except KeyError:
            return 130


def keeping(
    exc: BaseException, kept: Sequence[str] = (), detail: str = '',
    *, signame: str | None = None,
) -> Interrupted:
    """An :class:`Interrupted` for ``exc`` (a ``KeyboardInterrupt``: its
    signal, or ``signame``) that also names the complete backups ``kept``
    (before those ``exc`` already named) and says ``detail`` (after what
    ``exc`` said)."""
    before = list(getattr(exc, 'kept', None) or [])
    details = [getattr(exc, 'detail', '') or '', detail]
    return Interrupted(
        signame or getattr(exc, 'signame', None) or 'SIGINT',
        kept=list(kept) + [k for k in before if k not in kept],
        detail=' '.join(d for d in details if d),
    )


def describe(exc: BaseException) -> str:
    """One line for an error the SDK or keystoneauth raised.

    An HTTP error names the request, the status and the cloud's own
    explanation (``POST .../volumes failed: HTTP 413: VolumeSizeExceeds
    AvailableQuota...``) instead of the SDK's ``ConflictException: 409:
    Client Error for url: ...``; control characters in what the cloud
    said are escaped. Anything else is its message, on one line.
    """
    status = getattr(exc, 'status_code', None)
    url = getattr(exc, 'url', None)
    if isinstance(status, int) and url:
        method = getattr(exc, 'method', None) or 'request to'
        details = getattr(exc, 'details', None)
        text = f'{method} {url} failed: HTTP {status}'
        if details:
            text += f': {details}'
        request_id = getattr(exc, 'request_id', None)
        if request_id:
            text += f' (request ID {request_id})'
    else:
        text = str(exc) or type(exc).__name__
    return ' '.join(printable(part) for part in text.split())


def check_response(resp: object, what: str, expected: tuple[int, ...]) -> None:
    """Raise :class:`BackupError` (``<what> failed: HTTP <status> <text>``)
    unless the raw HTTP response's status is one of ``expected``."""
    status = getattr(resp, 'status_code', None)
    if status not in expected:
        text = (getattr(resp, 'text', '') or '').strip()[:300]
        raise BackupError(f'{what} failed: HTTP {status} {text}'.rstrip())
