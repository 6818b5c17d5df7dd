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

"""Progress and notices for the user, always on stderr.

stdout belongs to the formatted result (``-f json``, ``-f value``); progress
lines go to stderr and only when stderr is a terminal. Warnings and notices
are always written, because they tell the user something about the result
(e.g. that a backup is only crash-consistent).

Everything written is passed through :func:`~osc_backup.common.text.
printable_lines`: a name with terminal control characters in it is shown
escaped, never obeyed.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from osc_backup.common.text import printable_lines

#: one line at a time on stderr, whichever thread writes it
_WRITE = threading.Lock()


class Reporter:
    def __init__(
        self,
        stream: TextIO | None = None,
        progress: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if progress is None:
            isatty = getattr(self.stream, 'isatty', None)
            progress = bool(isatty and isatty())
        self.progress = progress
        self._started = time.monotonic()

    def _write(self, text: str) -> None:
        with _WRITE:
            self.stream.write(printable_lines(text) + '\n')
            self.stream.flush()

    def step(self, message: str) -> None:
        """A progress line: shown on a terminal only."""
        if self.progress:
            elapsed = time.monotonic() - self._started
            self._write(f'[{elapsed:6.1f}s] {message}')

    def warn(self, message: str) -> None:
        """A warning about the result: always shown."""
        self._write(f'WARNING: {message}')

    def note(self, message: str) -> None:
        """Information the user needs whatever the terminal: always shown."""
        self._write(message)


class Prefixed(Reporter):
    """Writes through ``parent``, each line after ``prefix`` (e.g. the
    resource a worker of ``backup run`` backs up); its steps are shown
    only when ``steps`` is true."""

    def __init__(self, parent: Reporter, prefix: str, *, steps: bool) -> None:
        super().__init__(stream=parent.stream, progress=parent.progress)
        self.parent = parent
        self.prefix = prefix
        self.progress = steps and parent.progress

    def _write(self, text: str) -> None:
        lines = text.split('\n')
        self.parent._write('\n'.join(
            [f'{self.prefix}: {lines[0]}']
            + [f'{self.prefix}: {line}' if line else line
               for line in lines[1:]]
        ))


class NullReporter(Reporter):
    """Swallows everything; for library callers that want silence."""

    def __init__(self) -> None:
        super().__init__(stream=sys.stderr, progress=False)

    def _write(self, text: str) -> None:
        pass
