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

"""Barbican secrets: save a payload safely, and store it again.

* The payload is fetched with the secret's own content type (its
  ``content_types['default']``), else ``application/octet-stream``, and
  kept as bytes (binary-safe).
* Every request that carries a payload is sent with keystoneauth's
  ``log=False``: neither the request, nor the response (body or headers)
  reaches the debug log, also not with ``--debug``. openstacksdk's
  ``Secret.fetch`` (``get_secret``) is not used: it fetches the payload
  through a request that is logged, and text payloads would appear in the
  debug log.
* Files are created with ``O_CREAT | O_EXCL`` and mode 0600: never
  world-readable (whatever the umask), never an overwrite, never through a
  symlink.
* A Cinder encrypted volume (LUKS) is not opened with the payload itself:
  os-brick uses ``binascii.hexlify(key)`` as the passphrase.
  :func:`luks_passphrase` gives that; :func:`legacy_passphrase` the
  "mangled" form (hex digits without zero padding) some volumes made by
  old releases have (os-brick bug 1633518; os-brick tries it as a fallback
  and then re-keys the volume, ``_unmangle_volume``).

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from openstack import exceptions as sdk_exc

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common.progress import NullReporter, Reporter

OCTET_STREAM = 'application/octet-stream'
TEXT_PLAIN = 'text/plain'

FORMAT = 'osc-backup-secret'
FORMAT_VERSION = 1

#: suffixes of the files saved next to a backup image's data file (the
#: backup-set layout owns them)
KEY_SUFFIX = backup_set.KEY_SUFFIX
PASSPHRASE_SUFFIX = backup_set.PASSPHRASE_SUFFIX
METADATA_SUFFIX = '.metadata.json'

#: what a file written by :func:`save_secret` holds
PAYLOAD = 'payload'
PASSPHRASE = 'luks-passphrase'  # noqa: S105 (a label)
LEGACY_PASSPHRASE = 'luks-passphrase-legacy'  # noqa: S105 (a label)

_UUID = re.compile(
    r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', re.I
)

#: Image properties Cinder sets on an image of an encrypted volume.
IMAGE_KEY_ID = 'cinder_encryption_key_id'
IMAGE_KEY_POLICY = 'cinder_encryption_key_deletion_policy'
ON_IMAGE_DELETION = 'on_image_deletion'
#: the policy of an image holding a key the command did not create
DO_NOT_DELETE = 'do_not_delete'

LEGACY_NOTE = (
    'Volumes created by old releases may use the "mangled" passphrase '
    '(hex digits without zero padding, os-brick bug 1633518); if the '
    'hexlified passphrase does not open the data, try '
    "'openstack backup secret save <secret> --legacy-passphrase'."
)


# -- passphrases ---------------------------------------------------------
def luks_passphrase(key: bytes) -> bytes:
    """The passphrase os-brick opens Cinder's LUKS volumes with."""
    return binascii.hexlify(key)


def legacy_passphrase(key: bytes) -> bytes:
    """The "mangled" passphrase of os-brick bug 1633518 (no zero padding:
    ``''.join(hex(x).replace('0x', '') for x in key)``)."""
    return ''.join(format(x, 'x') for x in key).encode('ascii')


# -- files ---------------------------------------------------------------
def write_private(path: str, data: bytes) -> None:
    """Create ``path`` (mode 0600, exclusive) with ``data`` and fsync it.

    :raises errors.InvalidInput: when ``path`` exists (never an overwrite).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise errors.InvalidInput(
            f"'{path}' exists: osc-backup never overwrites a secret file; "
            'choose another name or remove it first.'
        ) from None
    except OSError as exc:
        raise errors.BackupError(f"Cannot create '{path}': {exc}") from None
    try:
        # the umask cannot widen 0600, but an ACL default could: be sure
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def metadata_path(path: str) -> str:
    return path + METADATA_SUFFIX


# -- Barbican ------------------------------------------------------------
def secret_uuid(text: str) -> str | None:
    """The UUID of a secret ID or href (``.../v1/secrets/<uuid>``)."""
    text = text.strip().rstrip('/')
    if text.endswith('/payload'):
        text = text[: -len('/payload')]
    last = text.rsplit('/', 1)[-1]
    if _UUID.fullmatch(last):
        return last.lower()
    return None


def _get_json(km: Any, url: str) -> Any:
    resp = km.get(url, headers={'Accept': 'application/json'})
    sdk_exc.raise_from_response(resp)
    return resp.json()


def find_secret(conn: Any, name_or_ref: str) -> dict[str, Any]:
    """A secret's metadata (Barbican's JSON, no payload) by name, ID or
    href, with one clear error."""
    try:
        return _find_secret(conn, name_or_ref)
    except sdk_exc.HttpException as exc:
        raise errors.BackupError(
            f"Cannot read secret '{name_or_ref}': {exc.details or exc}"
        ) from None
    except sdk_exc.SDKException as exc:  # e.g. no key-manager endpoint
        raise errors.BackupError(
            f'Cannot reach the Key Manager service (Barbican): {exc}'
        ) from None


def _find_secret(conn: Any, name_or_ref: str) -> dict[str, Any]:
    km = conn.key_manager
    uuid = secret_uuid(name_or_ref)
    if uuid is not None:
        try:
            return dict(_get_json(km, f'/secrets/{uuid}'))
        except sdk_exc.NotFoundException:
            raise errors.InvalidInput(
                f"No secret with ID '{uuid}' found (or you may not read "
                'it).'
            ) from None
        except sdk_exc.ForbiddenException:
            raise errors.InvalidInput(
                f"Not allowed to read secret '{uuid}'."
            ) from None
    try:
        found = list(km.secrets(name=name_or_ref))
    except sdk_exc.HttpException as exc:
        raise errors.BackupError(
            f'Cannot list secrets: {exc.details or exc}'
        ) from exc
    found = [s for s in found if s.name == name_or_ref]
    if not found:
        raise errors.InvalidInput(
            f"No secret with name, ID or href '{name_or_ref}' found."
        )
    if len(found) > 1:
        raise errors.InvalidInput(
            f"More than one secret is named '{name_or_ref}': use its ID "
            'or href.'
        )
    uuid = secret_uuid(found[0].secret_ref or '')
    if uuid is None:
        raise errors.BackupError(
            f"Barbican returned no usable href for secret '{name_or_ref}'."
        )
    return dict(_get_json(km, f'/secrets/{uuid}'))


def content_type(meta: Mapping[str, Any]) -> str:
    types = meta.get('content_types') or {}
    return str(types.get('default') or OCTET_STREAM)


def is_text(ctype: str) -> bool:
    return ctype.split(';', 1)[0].strip().lower() == TEXT_PLAIN


def fetch_payload(conn: Any, meta: Mapping[str, Any]) -> tuple[bytes, str]:
    """The payload as bytes, and the content type it was fetched as.

    Sent with ``log=False``: nothing of this request or its answer is
    logged.
    """
    uuid = secret_uuid(str(meta.get('secret_ref') or ''))
    if uuid is None:
        raise errors.BackupError('The secret has no href.')
    ctype = content_type(meta)
    resp = conn.key_manager.get(
        f'/secrets/{uuid}/payload', headers={'Accept': ctype}, log=False,
    )
    if resp.status_code != 200:
        # the body may echo the request; keep it out of the message
        raise errors.BackupError(
            f'Fetching the payload of secret {uuid} as {ctype} failed: '
            f'HTTP {resp.status_code}.'
        )
    return bytes(resp.content), ctype


def describe(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of the metadata file (never the payload)."""
    return {
        'name': meta.get('name'),
        'secret_type': meta.get('secret_type'),
        'algorithm': meta.get('algorithm'),
        'bit_length': meta.get('bit_length'),
        'mode': meta.get('mode'),
        'content_types': meta.get('content_types'),
        'created': meta.get('created'),
        'expiration': meta.get('expiration'),
        'href': meta.get('secret_ref'),
        'id': secret_uuid(str(meta.get('secret_ref') or '')),
    }


def build_metadata(
    meta: Mapping[str, Any],
    *,
    written: str,
    fetched_as: str,
    files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'tool': tags.TOOL,
        'tool_version': tags.tool_version(),
        'saved_at': datetime.datetime.now(datetime.UTC)
        .isoformat(timespec='seconds')
        .replace('+00:00', 'Z'),
        'secret': describe(meta),
        'payload_content_type': fetched_as,
        'written': written,
        'files': dict(files or {}),
    }
    if written != PAYLOAD or (files or {}).get(PASSPHRASE):
        doc['passphrase'] = (
            'binascii.hexlify(payload), as os-brick opens Cinder LUKS '
            'volumes' if written != LEGACY_PASSPHRASE else
            'legacy mangled hex form (os-brick bug 1633518)'
        )
        doc['note'] = LEGACY_NOTE
    return doc


@dataclass
class SavedSecret:
    secret_id: str | None
    href: str | None
    name: str | None
    secret_type: str | None
    content_type: str
    written: str
    file: str | None
    metadata_file: str | None
    size: int
    files: list[str] = field(default_factory=list)


def save_secret(
    conn: Any,
    secret: str,
    *,
    file: str | None = None,
    written: str = PAYLOAD,
    stdout: BinaryIO | None = None,
    stdout_isatty: bool = False,
    reporter: Reporter | None = None,
) -> SavedSecret:
    """Save one secret's payload (or LUKS passphrase) to ``file``
    (0600, exclusive) with a metadata file next to it, or to ``stdout``.

    :raises errors.InvalidInput: before fetching anything when the target
        exists, or when a binary payload would go to a terminal.
    """
    reporter = reporter or NullReporter()
    if file is not None:
        for path in (file, metadata_path(file)):
            if os.path.lexists(path):
                raise errors.InvalidInput(
                    f"'{path}' exists: osc-backup never overwrites a "
                    'secret file; choose another name or remove it first.'
                )
        directory = os.path.dirname(os.path.abspath(file))
        if not os.path.isdir(directory):
            raise errors.InvalidInput(
                f"Directory '{directory}' does not exist."
            )
    meta = find_secret(conn, secret)
    ctype = content_type(meta)
    if (
        file is None
        and stdout_isatty
        and written == PAYLOAD
        and not is_text(ctype)
    ):
        raise errors.InvalidInput(
            f"The payload of this secret is binary ({ctype}): refusing to "
            'write it to a terminal. Use --file <path>, redirect stdout, '
            'or --luks-passphrase for the printable passphrase.'
        )
    reporter.step(f"Fetching the payload of secret {meta.get('secret_ref')}")
    payload, fetched_as = fetch_payload(conn, meta)
    if written == PASSPHRASE:
        data = luks_passphrase(payload)
    elif written == LEGACY_PASSPHRASE:
        data = legacy_passphrase(payload)
    else:
        data = payload
    saved = SavedSecret(
        secret_id=secret_uuid(str(meta.get('secret_ref') or '')),
        href=meta.get('secret_ref'),
        name=meta.get('name'),
        secret_type=meta.get('secret_type'),
        content_type=fetched_as,
        written=written,
        file=None,
        metadata_file=None,
        size=len(data),
    )
    if file is None:
        out = stdout
        if out is None:
            import sys

            out = sys.stdout.buffer
        out.write(data)
        out.flush()
        return saved
    write_private(file, data)
    mpath = metadata_path(file)
    doc = build_metadata(
        meta, written=written, fetched_as=fetched_as,
        files={written: os.path.basename(file)},
    )
    try:
        write_private(mpath, _json(doc))
    except BaseException:
        os.unlink(file)
        raise
    saved.file = os.path.abspath(file)
    saved.metadata_file = os.path.abspath(mpath)
    saved.files = [saved.file, saved.metadata_file]
    return saved


def _json(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + '\n').encode()


# -- keys saved with a backup image --------------------------------------
def key_paths(data_path: str) -> dict[str, str]:
    """The key files saved next to a backup set's data file."""
    return {
        PAYLOAD: data_path + KEY_SUFFIX,
        PASSPHRASE: data_path + PASSPHRASE_SUFFIX,
        'metadata': data_path + backup_set.KEY_METADATA_SUFFIX,
    }


def image_key_files(
    conn: Any, key_id: str, data_name: str
) -> dict[str, bytes]:
    """The key of an encrypted volume's image, as the files of its backup
    set: {file name: content} for the payload, the LUKS passphrase and the
    metadata (:func:`key_paths` of ``data_name``). Nothing is written.
    """
    names = {k: os.path.basename(v) for k, v in key_paths(data_name).items()}
    meta = find_secret(conn, key_id)
    payload, fetched_as = fetch_payload(conn, meta)
    doc = build_metadata(
        meta, written=PAYLOAD, fetched_as=fetched_as,
        files={
            PAYLOAD: names[PAYLOAD],
            PASSPHRASE: names[PASSPHRASE],
            'data': os.path.basename(data_name),
        },
    )
    doc['image_property'] = IMAGE_KEY_ID
    return {
        names[PAYLOAD]: payload,
        names[PASSPHRASE]: luks_passphrase(payload),
        names['metadata']: _json(doc),
    }


def parse_image_key(
    payload: bytes, metadata: bytes, origin: str
) -> tuple[bytes, dict[str, Any]]:
    """The key saved with a backup set: (payload, its metadata document).

    :raises errors.InvalidInput: the metadata is not ours.
    """
    try:
        doc = json.loads(metadata)
    except ValueError as exc:
        raise errors.InvalidInput(
            f"Cannot read the key metadata of '{origin}': {exc}"
        ) from None
    if not isinstance(doc, dict) or doc.get('format') != FORMAT:
        raise errors.InvalidInput(
            f"The key metadata of '{origin}' is not an osc-backup secret "
            'metadata file.'
        )
    if not isinstance(doc.get('secret') or {}, dict):
        raise errors.InvalidInput(
            f"The key metadata of '{origin}' has no secret description."
        )
    return payload, doc


def store_secret(
    conn: Any,
    payload: bytes,
    described: Mapping[str, Any],
    *,
    content_type_: str = OCTET_STREAM,
    name: str | None = None,
) -> str:
    """Store ``payload`` as a new secret (the recorded type, algorithm,
    bit length and mode); return its href. Sent with ``log=False``."""
    body: dict[str, Any] = {
        'name': name if name is not None else described.get('name'),
        'secret_type': described.get('secret_type') or 'opaque',
        'algorithm': described.get('algorithm'),
        'bit_length': described.get('bit_length'),
        'mode': described.get('mode'),
    }
    if is_text(content_type_):
        body['payload'] = payload.decode('utf-8')
        body['payload_content_type'] = TEXT_PLAIN
    else:
        body['payload'] = base64.b64encode(payload).decode('ascii')
        body['payload_content_type'] = OCTET_STREAM
        body['payload_content_encoding'] = 'base64'
    body = {k: v for k, v in body.items() if v is not None}
    resp = conn.key_manager.post('/secrets', json=body, log=False)
    if resp.status_code != 201:
        raise errors.BackupError(
            f'Barbican refused to store the key: HTTP {resp.status_code}.'
        )
    href = str(resp.json()['secret_ref'])
    return href


def delete_secret(conn: Any, secret_id: str) -> None:
    conn.key_manager.delete_secret(secret_id, ignore_missing=True)
