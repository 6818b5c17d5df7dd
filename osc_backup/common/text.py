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

"""Text from the cloud made safe to print: the one escaping helper.

Names, descriptions and fault messages come from the cloud, and anyone who
can name a volume or an image can put terminal control characters in them
(``ESC [ 2 J`` clears the screen, ``\\r`` overwrites a line, a newline forges
one more line of output, U+202E reverses the text that follows). Every
string this tool prints to a terminal goes through :func:`printable` (or
:func:`printable_lines` for messages whose own line breaks are meant):
control characters become Python-style escapes (``\\x1b``, ``\\n``,
``\\u202e``), everything else is kept as it is.

What is escaped: C0 controls and DEL, C1 controls (U+0080-U+009F), the
Unicode line and paragraph separators and the bidirectional formatting
characters. JSON and YAML output escape control characters themselves and
are left alone.
"""

from __future__ import annotations

import unicodedata

#: bidirectional embeddings, overrides and isolates (the "Trojan Source"
#: characters), shown escaped
_BIDI = frozenset('\u200e\u200f\u202a\u202b\u202c\u202d\u202e'
                  '\u2066\u2067\u2068\u2069\u061c')

_SHORT = {'\n': '\\n', '\r': '\\r', '\t': '\\t'}


def _unsafe(ch: str) -> bool:
    if ch in _BIDI:
        return True
    return unicodedata.category(ch) in ('Cc', 'Zl', 'Zp')


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    return f'\\x{code:02x}' if code < 0x100 else f'\\u{code:04x}'


def printable(value: object) -> str:
    """``value`` as a string with every control character escaped.

    >>> printable('db\\x1b[2Jdata\\n')
    'db\\\\x1b[2Jdata\\\\n'
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to do
        return text
    return ''.join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def printable_lines(message: object) -> str:
    """Like :func:`printable`, but keep the message's own line breaks.

    For messages this tool composes over several lines; a name inside them
    should already have been passed through :func:`printable`, so that a
    newline in it cannot forge a line.
    """
    text = message if isinstance(message, str) else str(message)
    return '\n'.join(printable(line) for line in text.split('\n'))
