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

"""The one HTTP transfer: a URL's body -> a local file, verified.

:func:`receive` streams a response body into an open file descriptor and
checks it against the hash and size expected; it knows nothing of images,
backup sets or cliff (callers name the file, decide what to do on a
mismatch and rename it into place):

* a transfer that starts at ``offset > 0`` (a partial file from an earlier
  run) first re-hashes the bytes already there, then continues with an
  HTTP ``Range`` request (``206``; a ``200`` restarts cleanly from byte 0);
  when the whole does not verify it is received once more from byte 0;
* transient errors (connection reset, short body, 5xx) are retried with a
  bounded exponential backoff, continuing where the data stopped.

Speed: the calling thread receives into a small pool of large buffers
(straight from the socket, no intermediate copies); one thread per hash
algorithm and one writer consume each buffer concurrently (hashlib and
``os.pwrite`` release the GIL on large buffers). The writer starts the
kernel's writeback every few MiB (``sync_file_range``) so the final
``fsync`` is short, and drops written pages from the page cache. Peak
memory is the buffer pool, whatever the size of the body.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import http.client
import logging
import mmap
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from osc_backup.common import errors
from osc_backup.common import waits
from osc_backup.common.progress import Reporter
from osc_backup.common.text import printable

LOG = logging.getLogger(__name__)

MiB = 1024 * 1024

#: Status codes worth retrying (besides connection errors).
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


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


class HashMismatch(errors.BackupError):
    """The received data does not match the hash expected."""

    def __init__(self, message: str, got: str = '') -> None:
        super().__init__(message)
        #: what arrived (e.g. ``sha512 <hex>``, ``N bytes, expected M``)
        self.got = got


@dataclass
class Expected:
    """What the data must be; ``algorithm`` None: nothing to verify."""

    algorithm: str | None
    value: str | None
    size: int | None


@dataclass
class Received:
    """What :func:`receive` did."""

    #: hex digest of every algorithm asked for, over the whole file
    digests: dict[str, str]
    #: bytes already in the file that verified with the rest (0: none)
    resumed_from: int
    #: transient errors retried
    retries: int
    #: bytes received from the network
    received: int


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
            # a worker of backup run: its run was interrupted (the main
            # thread's Ctrl-C); as a Ctrl-C here, the partial data stays
            waits.check_cancelled()
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
        desc=printable(label),
        dynamic_ncols=True,
        leave=False,
        mininterval=0.5,
    )
    try:
        yield bar
    finally:
        bar.close()


def receive(
    session: Any,
    url: str,
    fd: int,
    offset: int,
    expected: Expected,
    *,
    algorithms: list[str],
    label: str,
    what: str,
    reporter: Reporter,
    options: TransferOptions,
) -> Received:
    """Receive ``url`` into ``fd`` from ``offset`` on, and verify it.

    :param session: a keystoneauth adapter (e.g. ``conn.image``): relative
        ``url``, ``raise_exc``.
    :param offset: bytes of the file kept from an earlier transfer; they
        are hashed before the rest is requested.
    :param algorithms: hashes to compute (``expected.algorithm`` among
        them when it is set).
    :param label: the progress bar's label; ``what``: the thing received,
        in messages (``image <ID>``).
    :raises HashMismatch: the data received from byte 0 did not verify.
    :raises errors.BackupError: the transfer or a write failed.
    """
    resumed_from = offset
    retries = 0
    received = 0
    while True:
        pipeline = _Pipeline(fd, algorithms, options)
        try:
            if offset:
                reporter.step(
                    f'Resuming at {offset} bytes: checking the partial data'
                )
                _hash_prefix(pipeline, fd, offset)
            with _progress_bar(reporter, expected.size, offset, label) as bar:
                transfer = _Transfer(
                    session, url, pipeline, expected.size, options,
                    reporter, bar,
                )
                try:
                    end = transfer.run(offset)
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
            return Received(digests, resumed_from, retries, received)
        if offset:
            reporter.warn(
                f'The resumed download of {what} did not verify ({got}); '
                'downloading it again from the beginning.'
            )
            os.ftruncate(fd, 0)
            offset = 0
            resumed_from = 0
            continue
        raise HashMismatch(f'{what} did not verify: got {got}', got=got)
