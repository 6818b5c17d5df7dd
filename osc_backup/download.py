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

"""The one download path: a Glance image -> a verified local backup set.

:func:`save_image` is what every verb calls. It guarantees that a file
under the final name is complete and verified:

* the data goes to a hidden temporary name in the target folder
  (``.<name>.part``, with a ``.part.json`` sidecar naming the image and
  its hash); it is fsynced and renamed only after the hash Glance recorded
  (``os_hash_algo``/``os_hash_value``, else the md5 ``checksum``) matched;
* a run that stops half-way leaves the partial file; the next run for the
  same image (same ID and hash) re-hashes it and continues with an HTTP
  ``Range`` request (Glance answers ``206``; a ``200`` restarts cleanly);
* transient errors (connection reset, short body, 5xx) are retried with a
  bounded exponential backoff, continuing where the data stopped.

Speed: the calling thread receives into a small pool of large buffers
(straight from the socket, no intermediate copies); one thread per hash
algorithm and one writer consume each buffer concurrently (hashlib and
``os.pwrite`` release the GIL on large buffers). The writer starts the
kernel's writeback every few MiB (``sync_file_range``) so the final
``fsync`` is short, and drops written pages from the page cache. Peak
memory is the buffer pool, whatever the image size.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import mmap
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common.cleanup import Cleanup
from osc_backup.common.progress import NullReporter, Reporter
from osc_backup.procedures import image_sets

LOG = logging.getLogger(__name__)

MiB = 1024 * 1024

#: Status codes worth retrying (besides connection errors).
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

PART_SUFFIX = '.part'
STATE_SUFFIX = '.part.json'
INVALID_SUFFIX = '.unverified'

#: Free space kept in reserve besides the data (manifest, checksum file).
SPACE_MARGIN = 1 * MiB


@dataclass
class TransferOptions:
    """Tuning knobs; the defaults are what the benchmark found best."""

    #: bytes per receive buffer
    buffer_size: int = 8 * MiB
    #: buffers in the pool (peak memory is about buffer_size * buffers)
    buffers: int = 4
    #: start writeback every this many bytes; 0 disables (fsync at the end
    #: only)
    flush_window: int = 32 * MiB
    #: drop written pages from the page cache once they are on disk
    drop_cache: bool = True
    #: write aligned blocks with O_DIRECT (no page cache) where the file
    #: system allows it; the flush window then only applies to the tail
    direct: bool = True
    #: retries of transient errors in a row without progress
    retries: int = 5
    #: first backoff (seconds), doubled each time, capped at backoff_max
    backoff: float = 1.0
    backoff_max: float = 30.0
    #: (connect, read) socket timeouts in seconds
    timeout: tuple[float, float] = (30.0, 120.0)
    #: injectable for tests
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


@dataclass
class SavedImage:
    """The result of :func:`save_image`."""

    image_id: str
    name: str | None
    file: str
    manifest: str
    checksum_file: str
    size: int
    hash_algo: str | None
    hash_value: str | None
    sha256: str
    #: bytes already on disk from an earlier run (0: a fresh download)
    resumed_from: int
    #: transient errors retried in this run
    retries: int
    #: seconds for the whole run
    duration: float
    #: bytes received in this run per second of the run
    throughput: float

    @property
    def files(self) -> list[str]:
        return [self.file, self.manifest, self.checksum_file]


class HashMismatch(errors.BackupError):
    """The downloaded data does not match the hash Glance recorded."""


@dataclass
class _Expected:
    algorithm: str | None
    value: str | None
    size: int | None


# -- small OS helpers ------------------------------------------------------

_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4
_libc_sync_file_range: Any = None
_libc_loaded = False


def _sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> bool:
    """Linux sync_file_range(2) through ctypes; False where unavailable."""
    global _libc_sync_file_range, _libc_loaded
    if not _libc_loaded:
        _libc_loaded = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
            func = libc.sync_file_range
            func.argtypes = [
                ctypes.c_int,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_uint,
            ]
            func.restype = ctypes.c_int
            _libc_sync_file_range = func
        except (OSError, AttributeError):
            _libc_sync_file_range = None
    if _libc_sync_file_range is None:
        return False
    return bool(_libc_sync_file_range(fd, offset, nbytes, flags) == 0)


class _Flusher:
    """Progressive writeback: keeps dirty pages to about two windows."""

    def __init__(self, fd: int, window: int, drop_cache: bool) -> None:
        self.fd = fd
        self.window = window
        self.drop_cache = drop_cache
        self.reset(0)

    def reset(self, offset: int) -> None:
        self.mark = offset - offset % self.window if self.window else 0
        self.previous: int | None = None

    def written(self, end: int) -> None:
        if not self.window:
            return
        while end - self.mark >= self.window:
            start = self.mark
            self.mark += self.window
            _sync_file_range(
                self.fd, start, self.window, _SYNC_FILE_RANGE_WRITE
            )
            prev = self.previous
            self.previous = start
            if prev is None:
                continue
            done = _sync_file_range(
                self.fd,
                prev,
                self.window,
                _SYNC_FILE_RANGE_WAIT_BEFORE
                | _SYNC_FILE_RANGE_WRITE
                | _SYNC_FILE_RANGE_WAIT_AFTER,
            )
            if done and self.drop_cache:
                with contextlib.suppress(OSError, AttributeError):
                    os.posix_fadvise(
                        self.fd, prev, self.window, os.POSIX_FADV_DONTNEED
                    )


#: offsets and lengths of O_DIRECT writes are multiples of this
DIRECT_ALIGN = 4096


def _open_direct(fd: int) -> int | None:
    """A second descriptor of the same file with O_DIRECT, if possible."""
    flag = getattr(os, 'O_DIRECT', 0)
    if not flag:
        return None
    try:
        return os.open(f'/proc/self/fd/{fd}', os.O_WRONLY | flag)
    except OSError as exc:
        LOG.debug('No O_DIRECT here (%s): writing through the page cache',
                  exc)
        return None


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# -- the pipeline ----------------------------------------------------------


class _Pipeline:
    """A pool of buffers, one consumer thread per hash and one writer.

    The producer (the calling thread) takes a free buffer, fills it and
    dispatches it; every consumer processes it; the last one hands it back
    to the pool. Memory is bounded by the pool.
    """

    def __init__(
        self,
        fd: int,
        algorithms: list[str],
        options: TransferOptions,
    ) -> None:
        self.fd = fd
        self.algorithms = algorithms
        self.hashers: dict[str, Any] = {a: hashlib.new(a) for a in algorithms}
        # page-aligned anonymous memory: usable for O_DIRECT writes
        self._maps = [
            mmap.mmap(-1, options.buffer_size) for _ in range(options.buffers)
        ]
        self._views = [memoryview(m) for m in self._maps]
        self.direct_fd = _open_direct(fd) if options.direct else None
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(options.buffers):
            self._free.put(i)
        self._refs = [0] * options.buffers
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.flusher = _Flusher(fd, options.flush_window, options.drop_cache)
        self._queues: list[queue.SimpleQueue[Any]] = []
        self._threads: list[threading.Thread] = []
        for algo in algorithms:
            self._start(f'hash-{algo}', self._hash_worker, algo)
        self._start('writer', self._write_worker, None)

    def _start(self, name: str, target: Callable[..., None], arg: Any) -> None:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        t = threading.Thread(
            target=target, args=(q, arg), name=f'osc-backup-{name}',
            daemon=True,
        )
        self._queues.append(q)
        self._threads.append(t)
        t.start()

    # producer side
    def buffer(self) -> tuple[int, memoryview]:
        idx = self._free.get()
        return idx, self._views[idx]

    def give_back(self, idx: int) -> None:
        self._free.put(idx)

    def dispatch(self, idx: int, n: int, offset: int, write: bool) -> None:
        self._refs[idx] = len(self._queues)
        item = (idx, n, offset, write)
        for q in self._queues:
            q.put(item)

    def drain(self) -> None:
        """Wait until every dispatched buffer has been processed."""
        held = [self._free.get() for _ in self._views]
        for idx in held:
            self._free.put(idx)

    def reset(self) -> None:
        """Start over from byte 0 (after a drain)."""
        self.hashers = {a: hashlib.new(a) for a in self.algorithms}
        os.ftruncate(self.fd, 0)
        self.flusher.reset(0)

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None
        # the buffers are unmapped when the last reference goes (a slice
        # may live on in a traceback)

    def digests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self.hashers.items()}

    # consumer side
    def _release(self, idx: int) -> None:
        with self._lock:
            self._refs[idx] -= 1
            last = self._refs[idx] == 0
        if last:
            self._free.put(idx)

    def _hash_worker(self, q: queue.SimpleQueue[Any], algo: str) -> None:
        while (item := q.get()) is not None:
            idx, n, _offset, _write = item
            try:
                if self.error is None:
                    self.hashers[algo].update(self._views[idx][:n])
            except BaseException as exc:  # pragma: no cover - defensive
                self.error = exc
            finally:
                self._release(idx)

    def _write(self, view: memoryview, offset: int) -> None:
        dfd = self.direct_fd
        if (
            dfd is not None
            and offset % DIRECT_ALIGN == 0
            and len(view) % DIRECT_ALIGN == 0
        ):
            try:
                _pwrite_all(dfd, view, offset)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                LOG.debug('O_DIRECT write refused, writing buffered')
                os.close(dfd)
                self.direct_fd = None
        _pwrite_all(self.fd, view, offset)
        self.flusher.written(offset + len(view))

    def _write_worker(self, q: queue.SimpleQueue[Any], _arg: Any) -> None:
        while (item := q.get()) is not None:
            idx, n, offset, write = item
            try:
                if write and self.error is None:
                    self._write(self._views[idx][:n], offset)
            except BaseException as exc:
                self.error = exc
            finally:
                self._release(idx)


# -- HTTP ------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying."""


class _Restart(Exception):
    """The server sent the whole image instead of the requested range."""


_CONTENT_RANGE = re.compile(r'bytes\s+(\d+)-(\d+)/(\d+|\*)')


def _transient_errors() -> tuple[type[BaseException], ...]:
    import requests
    import urllib3

    found: list[type[BaseException]] = [
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.Timeout,
        urllib3.exceptions.HTTPError,
        http.client.HTTPException,
        ConnectionError,
        TimeoutError,
        _Transient,
    ]
    try:
        from keystoneauth1 import exceptions as ksa_exc

        found.append(ksa_exc.ConnectionError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def _reader(resp: Any) -> Callable[[memoryview], int]:
    """The fastest way to read the body of ``resp`` into a buffer.

    A plain (not content-encoded) body is read straight from the
    underlying file object into our buffer; anything else goes through
    urllib3, which decodes it.
    """
    raw = resp.raw
    encoding = resp.headers.get('Content-Encoding', 'identity').lower()
    fp = getattr(raw, '_fp', None)
    if encoding in ('', 'identity') and hasattr(fp, 'readinto'):
        return fp.readinto  # type: ignore[no-any-return,union-attr]

    def read(view: memoryview) -> int:
        data = raw.read(len(view), decode_content=True)
        view[: len(data)] = data
        return len(data)

    return read


def _fill(read: Callable[[memoryview], int], view: memoryview) -> int:
    """Fill ``view`` as far as the body allows; 0 means end of body."""
    got = 0
    size = len(view)
    while got < size:
        n = read(view[got:])
        if not n:
            break
        got += n
    return got


class _Transfer:
    """Receive the image into the pipeline from ``offset`` on, retrying."""

    def __init__(
        self,
        session: Any,
        url: str,
        pipeline: _Pipeline,
        size: int | None,
        options: TransferOptions,
        reporter: Reporter,
        progress: Any,
    ) -> None:
        self.session = session
        self.url = url
        self.pipeline = pipeline
        self.size = size
        self.options = options
        self.reporter = reporter
        self.progress = progress
        self.retries = 0
        self.received = 0
        #: bytes dispatched to the pipeline (= in the file once drained)
        self.pos = 0
        #: the server sent more bytes than the image has
        self.overflow = False

    def run(self, offset: int) -> int:
        """Return the number of bytes in the file when the body ended."""
        transient = _transient_errors()
        failures = 0
        self.pos = offset
        while True:
            if self.size is not None and self.pos >= self.size:
                return self.pos
            before = self.pos
            try:
                self._request()
                if self.overflow:
                    return self.pos
                if self.size is not None and self.pos < self.size:
                    raise _Transient(
                        f'the body ended after {self.pos} of {self.size} '
                        'bytes'
                    )
                return self.pos
            except _Restart:
                self._restart('the image service did not send the '
                              'requested range')
                continue
            except transient as exc:
                self._settle()
                failures = 1 if self.pos > before else failures + 1
                if failures > self.options.retries:
                    raise errors.BackupError(
                        f'Downloading image data failed after '
                        f'{self.options.retries} retries: {exc}'
                    ) from exc
                delay = min(
                    self.options.backoff_max,
                    self.options.backoff * 2 ** (failures - 1),
                )
                self.retries += 1
                self.reporter.warn(
                    f'Download interrupted at {self.pos} bytes ({exc}); '
                    f'retrying in {delay:g}s '
                    f'({failures}/{self.options.retries}).'
                )
                self.options.sleep(delay)

    def _restart(self, why: str) -> None:
        """Throw away what we have and start again from byte 0."""
        self.reporter.note(
            f'Cannot resume: {why}; starting again from the beginning.'
        )
        self._settle()
        self.pipeline.reset()
        if self.progress is not None:
            self.progress.reset(total=self.size)
        self.pos = 0

    def _settle(self) -> None:
        self.pipeline.drain()
        if self.pipeline.error is not None:
            raise self._write_error()

    def _write_error(self) -> errors.BackupError:
        exc = self.pipeline.error
        return errors.BackupError(f'Writing the download failed: {exc}')

    def _request(self) -> None:
        pos = self.pos
        headers = {'Accept': 'application/octet-stream'}
        if pos:
            headers['Range'] = f'bytes={pos}-'
        resp = self.session.get(
            self.url,
            stream=True,
            headers=headers,
            raise_exc=False,
            timeout=self.options.timeout,
        )
        try:
            status = resp.status_code
            if status in TRANSIENT_STATUS:
                raise _Transient(f'HTTP {status} from the image service')
            if status == 416 and pos:
                # the partial data is longer than the image: start over
                raise _Restart()
            if status == 206 and pos:
                self._check_range(resp, pos)
            elif status == 200:
                if pos:
                    # the whole image came instead of the range: use it
                    self._restart('the image service sent the whole image')
            else:
                text = ''
                with contextlib.suppress(Exception):
                    text = resp.text.strip()[:300]
                raise errors.BackupError(
                    f'Downloading {self.url} failed: HTTP {status} {text}'
                    .rstrip()
                )
            self._receive(resp)
        finally:
            resp.close()

    def _check_range(self, resp: Any, pos: int) -> None:
        match = _CONTENT_RANGE.fullmatch(
            resp.headers.get('Content-Range', '').strip()
        )
        if not match or int(match.group(1)) != pos:
            raise _Restart()
        total = match.group(3)
        if (
            total != '*'
            and self.size is not None
            and int(total) != self.size
        ):
            raise _Restart()

    def _receive(self, resp: Any) -> None:
        read = _reader(resp)
        pipeline = self.pipeline
        limit = self.size
        while True:
            if pipeline.error is not None:
                raise self._write_error()
            idx, view = pipeline.buffer()
            try:
                n = _fill(read, view)
            except BaseException:
                pipeline.give_back(idx)
                raise
            if not n:
                pipeline.give_back(idx)
                return
            if limit is not None and self.pos + n > limit:
                # more data than the image has: never verifies
                self.overflow = True
                n = limit - self.pos
                if not n:
                    pipeline.give_back(idx)
                    return
            pipeline.dispatch(idx, n, self.pos, True)
            self.pos += n
            self.received += n
            if self.progress is not None:
                self.progress.update(n)
            if self.overflow:
                return


# -- naming and state ------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', text).strip('-.')[:80] or 'image'


def default_filename(record: Mapping[str, Any]) -> str:
    """``<name>-<first 8 of ID>.<disk format>`` (container format when not
    bare)."""
    image_id = str(record['id'])
    name = record.get('name') or image_id
    container = record.get('container_format')
    ext = (
        record.get('disk_format') or 'img'
        if container in (None, 'bare')
        else container
    )
    return f'{_slug(str(name))}-{image_id[:8]}.{ext}'


def _part_paths(final: str) -> tuple[str, str]:
    directory, base = os.path.split(final)
    part = os.path.join(directory, f'.{base}{PART_SUFFIX}')
    state = os.path.join(directory, f'.{base}{STATE_SUFFIX}')
    return part, state


def _state(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        'tool': tags.TOOL,
        'image_id': record.get('id'),
        'os_hash_algo': record.get('os_hash_algo'),
        'os_hash_value': record.get('os_hash_value'),
        'checksum': record.get('checksum'),
        'size': record.get('size'),
    }


def _read_state(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def expected_hash(
    record: Mapping[str, Any], *, allow_unverified: bool = False
) -> _Expected:
    """Which hash to verify: os_hash_algo/os_hash_value, else md5."""
    size = record.get('size')
    algo = record.get('os_hash_algo')
    value = record.get('os_hash_value')
    if algo and value:
        try:
            hashlib.new(algo)
            return _Expected(algo, value, size)
        except ValueError:
            LOG.debug('hash algorithm %s not available here', algo)
    if record.get('checksum'):
        return _Expected('md5', record['checksum'], size)
    if allow_unverified:
        return _Expected(None, None, size)
    raise errors.InvalidInput(
        f"Image {record.get('id')} has no hash this tool can verify "
        f'(os_hash_algo={algo!r}, no md5 checksum); pass '
        '--allow-unverified to download it anyway.'
    )


# -- the public entry point ------------------------------------------------


def find_image(conn: Any, image: Any) -> str:
    """The ID of ``image`` (a name, an ID or an Image object)."""
    if not isinstance(image, str):
        return str(image.id)
    from osc_backup.common import lookup

    return str(lookup.find(conn.image.find_image, 'image', image).id)


_NOT_ACTIVE = {
    'queued': 'has no data yet',
    'saving': 'is still being uploaded; wait until it is active',
    'uploading': 'is still being uploaded; wait until it is active',
    'importing': 'is still being imported; wait until it is active',
    'deactivated': (
        'is deactivated: its data cannot be downloaded until an '
        'administrator reactivates it'
    ),
    'killed': 'failed to upload and has no usable data',
    'pending_delete': 'is being deleted',
    'deleted': 'is deleted',
}


def _get_record(conn: Any, image_id: str) -> dict[str, Any] | None:
    """Glance's JSON for the image; None when there is no such image."""
    resp = conn.image.get(f'/images/{image_id}', raise_exc=False)
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise errors.BackupError(
            f'Reading image {image_id} failed: HTTP {resp.status_code}'
        )
    record: dict[str, Any] = resp.json()
    return record


def image_record(conn: Any, image_id: str) -> dict[str, Any]:
    """Glance's JSON for the image, every property included."""
    record = _get_record(conn, image_id)
    if record is None:
        raise errors.InvalidInput(f'No image with ID {image_id} found.')
    return record


_UUID = re.compile(
    r'[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}',
    re.IGNORECASE,
)


def lookup_image(conn: Any, image: Any) -> dict[str, Any]:
    """The record of ``image`` (a name, an ID or an Image object).

    An argument shaped like an ID costs one request (the record itself)
    instead of two (openstacksdk's find, then the record); when no image
    has that ID it is looked up as a name, as openstacksdk's find does.
    """
    if isinstance(image, str) and _UUID.fullmatch(image):
        record = _get_record(conn, image)
        if record is not None:
            return record
    return image_record(conn, find_image(conn, image))


def _resolve_target(
    target: str | os.PathLike[str], as_file: bool | None, record: Any
) -> str:
    path = os.fspath(target)
    if as_file is None:
        as_file = not os.path.isdir(path)
    if not as_file:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise errors.InvalidInput(
                f"Cannot create directory '{path}': {exc.strerror}."
            ) from None
        path = os.path.join(path, default_filename(record))
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise errors.InvalidInput(f"Directory '{directory}' does not exist.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise errors.InvalidInput(f"Directory '{directory}' is not writable.")
    return path


def check_free_space(directory: str, needed: int) -> None:
    """Refuse to start when ``needed`` bytes will not fit."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if needed + SPACE_MARGIN > free:
        raise errors.InvalidInput(
            f"Not enough free space in '{directory}': the download needs "
            f'{_human(needed)}, {_human(free)} are available.'
        )


def _human(n: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return f'{n:.1f} {unit}' if unit != 'B' else f'{int(n)} B'
        n /= 1024
    return f'{n} B'  # pragma: no cover


def _hash_prefix(pipeline: _Pipeline, fd: int, length: int) -> None:
    """Feed the first ``length`` bytes of the file to the hashers."""
    pos = 0
    while pos < length:
        idx, view = pipeline.buffer()
        want = min(len(view), length - pos)
        n = os.preadv(fd, [view[:want]], pos)
        if n <= 0:
            pipeline.give_back(idx)
            raise errors.BackupError('The partial file shrank while reading')
        pipeline.dispatch(idx, n, pos, False)
        pos += n
    pipeline.drain()


@contextlib.contextmanager
def _progress_bar(
    reporter: Reporter, total: int | None, initial: int, label: str
) -> Iterator[Any]:
    if not reporter.progress:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=initial,
        unit='B',
        unit_scale=True,
        unit_divisor=1024,
        file=reporter.stream,
        desc=label,
        dynamic_ncols=True,
        leave=False,
        mininterval=0.5,
    )
    try:
        yield bar
    finally:
        bar.close()


def save_image(
    conn: Any,
    image: Any,
    target: str | os.PathLike[str] = '.',
    *,
    as_file: bool | None = None,
    overwrite: bool = False,
    keep_partial: bool = False,
    resume: bool = True,
    allow_unverified: bool = False,
    reporter: Reporter | None = None,
    options: TransferOptions | None = None,
) -> SavedImage:
    """Download ``image`` into a verified backup set; see the module doc.

    :param conn: an openstacksdk Connection.
    :param image: name, ID or ``openstack.image.v2.image.Image``.
    :param target: a directory (the file is named after the image) or,
        with ``as_file=True`` or when it is not an existing directory, the
        data file's path. The manifest and checksum file go next to it.
    :param overwrite: replace an existing backup set of that name.
    :param keep_partial: on a hash mismatch keep the data as
        ``<file>.unverified`` instead of deleting it.
    :param resume: continue a partial download of the same image (same ID
        and hash) left by an earlier run.
    :param allow_unverified: download an image that has no hash at all.
    :raises errors.InvalidInput: nothing was downloaded (bad image, no
        space, the file exists...).
    :raises HashMismatch: the data did not verify; nothing is left under
        the final name.
    :raises errors.BackupError: the download failed; a partial file is
        kept for the next run to resume.
    """
    reporter = reporter or NullReporter()
    options = options or TransferOptions()
    started_wall = time.time()
    started = options.clock()

    record = lookup_image(conn, image)
    image_id = str(record['id'])
    status = record.get('status')
    if status != 'active':
        why = _NOT_ACTIVE.get(str(status), 'is not active')
        raise errors.InvalidInput(
            f"Image {image_id} is '{status}': it {why}. Only 'active' "
            'images can be saved.'
        )
    expected = expected_hash(record, allow_unverified=allow_unverified)
    final = _resolve_target(target, as_file, record)
    directory = os.path.dirname(final)
    set_files = [
        final,
        image_sets.manifest_path(final),
        image_sets.checksum_path(final),
    ]
    if not overwrite:
        existing = [p for p in set_files if os.path.lexists(p)]
        if existing:
            raise errors.InvalidInput(
                f"'{existing[0]}' already exists: pass --overwrite to "
                'replace it, or choose another --file/--dir.'
            )
    part, state_path = _part_paths(final)

    # open (or create) the partial file and lock it against a second run
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.InvalidInput(
                f"Another download is writing '{part}'."
            ) from None
        offset = 0
        state = _state(record)
        if resume and _read_state(state_path) == state:
            offset = os.fstat(fd).st_size
            if expected.size is not None and offset > expected.size:
                offset = 0
            elif expected.size is None or offset < expected.size:
                # continue on a block boundary, so O_DIRECT stays usable
                offset -= offset % DIRECT_ALIGN
        if expected.size is not None:
            try:
                check_free_space(directory, expected.size - offset)
            except errors.InvalidInput:
                if offset == 0:
                    _remove(part, state_path)
                raise
        if offset == 0:
            os.ftruncate(fd, 0)
            image_sets.write_atomic(
                state_path, json.dumps(state).encode()
            )
        result = _download(
            conn,
            image_id,
            record,
            fd,
            offset,
            expected,
            final=final,
            part=part,
            state_path=state_path,
            keep_partial=keep_partial,
            reporter=reporter,
            options=options,
        )
    finally:
        os.close(fd)
    digests, resumed_from, retries, received = result

    manifest = image_sets.build_manifest(
        conn,
        record,
        data_file=os.path.basename(final),
        size=os.path.getsize(final),
        hash_algo=expected.algorithm,
        hash_value=expected.value,
        sha256=digests['sha256'],
        started=started_wall,
        finished=time.time(),
    )
    mpath, cpath = image_sets.write_set(final, manifest)
    duration = options.clock() - started
    return SavedImage(
        image_id=image_id,
        name=record.get('name'),
        file=final,
        manifest=mpath,
        checksum_file=cpath,
        size=manifest['data']['size'],
        hash_algo=expected.algorithm,
        hash_value=expected.value,
        sha256=digests['sha256'],
        resumed_from=resumed_from,
        retries=retries,
        duration=duration,
        throughput=received / duration if duration > 0 else 0.0,
    )


def _download(
    conn: Any,
    image_id: str,
    record: Mapping[str, Any],
    fd: int,
    offset: int,
    expected: _Expected,
    *,
    final: str,
    part: str,
    state_path: str,
    keep_partial: bool,
    reporter: Reporter,
    options: TransferOptions,
) -> tuple[dict[str, str], int, int, int]:
    """Download, verify, fsync and rename; returns (digests, resumed from,
    retries, bytes received)."""
    algorithms = ['sha256']
    if expected.algorithm and expected.algorithm != 'sha256':
        algorithms.insert(0, expected.algorithm)
    url = f'/images/{image_id}/file'
    label = record.get('name') or image_id
    resumed_from = offset
    retries = 0
    received = 0
    attempt_offset = offset
    cleanup = Cleanup(reporter)  # turns SIGINT/SIGTERM into an exception
    try:
        with cleanup.guard():
            while True:
                pipeline = _Pipeline(fd, algorithms, options)
                try:
                    if attempt_offset:
                        reporter.step(
                            f'Resuming at {attempt_offset} bytes: '
                            'checking the partial data'
                        )
                        _hash_prefix(pipeline, fd, attempt_offset)
                    with _progress_bar(
                        reporter, expected.size, attempt_offset, label
                    ) as bar:
                        transfer = _Transfer(
                            conn.image, url, pipeline, expected.size,
                            options, reporter, bar,
                        )
                        try:
                            end = transfer.run(attempt_offset)
                        finally:
                            retries += transfer.retries
                            received += transfer.received
                    pipeline.drain()
                    if pipeline.error is not None:
                        raise transfer._write_error()
                finally:
                    pipeline.close()
                digests = pipeline.digests()
                if transfer.overflow:
                    got = f'more than the {expected.size} bytes it has'
                    ok = False
                elif expected.size is not None and end != expected.size:
                    got = f'{end} bytes, expected {expected.size}'
                    ok = False
                elif expected.algorithm is None:
                    got, ok = '', True
                else:
                    actual = digests[expected.algorithm]
                    ok = actual == expected.value
                    got = f'{expected.algorithm} {actual}'
                if ok:
                    break
                if attempt_offset:
                    reporter.warn(
                        f'The resumed download of image {image_id} did not '
                        f'verify ({got}); downloading it again from the '
                        'beginning.'
                    )
                    os.ftruncate(fd, 0)
                    attempt_offset = 0
                    resumed_from = 0
                    continue
                _discard(part, state_path, final, keep_partial, reporter)
                raise HashMismatch(
                    f'Image {image_id} did not verify: got {got}, Glance '
                    f'recorded {expected.algorithm} {expected.value}. The '
                    'data is corrupt (in the cloud or on the way); nothing '
                    f"was saved as '{final}'."
                )
            reporter.step('Verified; flushing to disk')
            os.fsync(fd)
            os.replace(part, final)
            image_sets.fsync_dir(os.path.dirname(final))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state_path)
    except KeyboardInterrupt:
        if os.path.exists(part):
            reporter.note(
                f"Interrupted: the partial download is kept in '{part}'; "
                'run the same command again to resume it.'
            )
        raise
    except HashMismatch:
        raise
    except errors.BackupError as exc:
        if os.path.exists(part) and not isinstance(exc, errors.InvalidInput):
            raise errors.BackupError(
                f"{exc}\nThe partial download is kept in '{part}'; run the "
                'same command again to resume it.'
            ) from exc
        raise
    return digests, resumed_from, retries, received


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _discard(
    part: str,
    state_path: str,
    final: str,
    keep_partial: bool,
    reporter: Reporter,
) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path)
    if keep_partial:
        kept = final + INVALID_SUFFIX
        os.replace(part, kept)
        reporter.note(f"The unverified data is kept in '{kept}'.")
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
