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

"""Errors raised by osc-backup procedures.

Procedures know nothing of cliff: they raise these, and the command layer
turns them into ``osc_lib.exceptions.CommandError`` (one line on stderr,
non-zero exit).
"""


class BackupError(Exception):
    """A failure whose message is complete and fit for the user."""


class InvalidInput(BackupError):
    """Bad input, detected before anything was created."""


class WaitError(BackupError):
    """A resource went to a failure state while we waited for it."""


class WaitTimeout(WaitError):
    """A bounded wait ran out of time."""


class CleanupError(BackupError):
    """Temporary resources could not be removed; the message says how."""


class Interrupted(KeyboardInterrupt):
    """The run was interrupted by SIGINT or SIGTERM."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def check_response(resp: object, what: str, expected: tuple[int, ...]) -> None:
    """Raise :class:`BackupError` (``<what> failed: HTTP <status> <text>``)
    unless the raw HTTP response's status is one of ``expected``."""
    status = getattr(resp, 'status_code', None)
    if status not in expected:
        text = (getattr(resp, 'text', '') or '').strip()[:300]
        raise BackupError(f'{what} failed: HTTP {status} {text}'.rstrip())
