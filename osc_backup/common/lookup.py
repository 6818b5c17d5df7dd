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

"""Name-or-ID look-ups with one clear error (the OSC convention)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common.text import printable


def find(
    finder: Callable[..., Any], kind: str, name_or_id: str, *,
    option: str = '',
) -> Any:
    """``finder(name_or_id, ignore_missing=False)``, errors made plain.

    :param finder: an openstacksdk ``find_<kind>`` proxy method.
    :param kind: 'volume', 'server'... for the message.
    :param option: the option that gave ``name_or_id``, for the message.
    :raises errors.InvalidInput: not found, or the name is ambiguous.
    """
    given = f' ({option})' if option else ''
    shown = printable(name_or_id)
    try:
        return finder(name_or_id, ignore_missing=False)
    except sdk_exc.DuplicateResource:
        raise errors.InvalidInput(
            f"More than one {kind} is named '{shown}'{given}: use its "
            'ID.'
        ) from None
    except sdk_exc.NotFoundException:
        raise errors.InvalidInput(
            f"No {kind} with name or ID '{shown}' found{given}."
        ) from None
