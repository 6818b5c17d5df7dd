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

"""OpenStackClient plugin hooks for osc-backup.

OSC imports this module on *every* ``openstack`` invocation, including
commands that are not ours. Keep it free of heavy imports: the commands
import what they need when they run.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_API_VERSION = '1'
API_NAME = 'backup'
API_VERSION_OPTION = 'os_backup_api_version'
API_VERSIONS = ('1',)


def make_client(instance: Any) -> Any:
    """Return the openstacksdk Connection osc-lib built for this session.

    osc-backup has no service of its own: it orchestrates Block Storage,
    Image, Compute and Key Manager through the SDK connection.
    """
    return instance.sdk_connection


def build_option_parser(
    parser: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """Hook to add global options."""
    parser.add_argument(
        '--os-backup-api-version',
        metavar='<backup-api-version>',
        default=os.environ.get('OS_BACKUP_API_VERSION'),
        help='osc-backup command set version, default='
        + DEFAULT_API_VERSION
        + ' (Env: OS_BACKUP_API_VERSION)',
    )
    return parser
