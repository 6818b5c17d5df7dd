"""Processes, ports and readiness: how tools/minicloud starts, recognises,
health-checks and stops the cloud's processes (`Service`), and the command
line of an API under gunicorn.

A process is ours when it carries MARKER=<state dir> in its environment
(or, for titles rewritten by setproctitle, the state dir in its command
line); pid files hold the PID and its start time, so stale ones and
recycled PIDs are ignored.
"""

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time

from minicloud_lib.control.common import (
    HOST, LOGS, MARKER, RUN, STATE, Error, base_env, bin_, log, tail)


# --------------------------------------------------------------------------
# Health checks: every one has a time limit.

def tcp_greeting(port, send=None, expect=b'', timeout=3):
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            if send:
                s.sendall(send)
            data = s.recv(64)
            return data.startswith(expect) and len(data) > 0, (
                'answered' if data else 'connection closed')
    except OSError as e:
        return False, str(e)


def http_ok(port, path='/', timeout=5):
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        conn.request('GET', path)
        status = conn.getresponse().status
        conn.close()
        if status >= 500:
            return False, 'HTTP %d' % status
        return True, 'HTTP %d' % status
    except (OSError, http.client.HTTPException) as e:
        return False, str(e) or e.__class__.__name__


def gunicorn(module, port, threads=4):
    return [bin_('gunicorn'), '--workers', '1', '--threads', str(threads),
            '--worker-class', 'gthread', '--bind', '%s:%d' % (HOST, port),
            '--timeout', '600', '--graceful-timeout', '5',
            # idle keep-alive connections stay open longer than any client
            # polls (gunicorn's default, 2 s, equals openstacksdk's poll
            # interval: the client then reuses a connection the server is
            # closing and gets 'Remote end closed connection')
            '--keep-alive', '75',
            # the process title names the state dir (see is_ours)
            '--name', 'minicloud %s %s/' % (module, STATE),
            'minicloud_lib.%s:application' % module]


# --------------------------------------------------------------------------
# The services.

class Service:
    """One process of the cloud: how it starts, is checked and stops."""

    def __init__(self, name, argv, ports=(), health=None, phase=2, user=None,
                 env=None, stop=None, after_stop=None, grace=15):
        self.name = name
        self.grace = grace          # seconds between SIGTERM and SIGKILL
        self.argv = argv            # callable -> list
        self.ports = ports
        self.health = health        # callable(service) -> (ok, detail)
        self.phase = phase          # start order: 0 infra, 1 keystone, 2 rest,
        #                             3 nova-compute
        self.user = user
        self.env = env or {}
        self.stop_hook = stop
        self.after_stop = after_stop

    @property
    def pidfile(self):
        return os.path.join(RUN, self.name + '.pid')

    @property
    def logfile(self):
        return os.path.join(LOGS, self.name + '.log')

    def pid(self):
        """PID of our running process, or None (for a stale pid file too)."""
        try:
            with open(self.pidfile) as f:
                pid, start = f.read().split()[:2]
                pid = int(pid)
        except (OSError, ValueError):
            return None
        if starttime(pid) == start and is_ours(pid):
            return pid
        return None

    def started_at(self):
        try:
            return os.path.getmtime(self.pidfile)
        except OSError:
            return 0

    def check(self):
        pid = self.pid()
        if pid is None:
            return False, 'not running'
        ok, detail = self.health(self)
        return ok, 'pid %d, %s' % (pid, detail)


# --------------------------------------------------------------------------
# Processes.

def proc_env(pid):
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            return f.read().split(b'\0')
    except OSError:
        return []


def is_ours(pid):
    """Started by this minicloud (its state dir): environment or cmdline.

    setproctitle (gunicorn, oslo) overwrites the environment block that
    /proc shows, so the command line names the state dir too.
    """
    return (('%s=%s' % (MARKER, STATE)).encode() in proc_env(pid)
            or STATE + '/' in cmdline(pid))


def starttime(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(') ', 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def our_pids():
    """Processes that carry our environment marker (never by cmdline: a
    developer's `tail -f $STATE/log/...` is not ours)."""
    marker = ('%s=%s' % (MARKER, STATE)).encode()
    return [int(d) for d in os.listdir('/proc')
            if d.isdigit() and int(d) != os.getpid()
            and marker in proc_env(int(d))]


def listeners(port):
    """PIDs listening on TCP port (any address), from /proc."""
    inodes = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == '0A' and int(
                            parts[1].rsplit(':', 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            pass
    if not inodes:
        return []
    pids = set()
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir('/proc/%s/fd' % d):
                with contextlib.suppress(OSError):
                    link = os.readlink('/proc/%s/fd/%s' % (d, fd))
                    if link.startswith('socket:[') and link[8:-1] in inodes:
                        pids.add(int(d))
    return sorted(pids) or ['?']


def cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return '?'


def kill_pids(pids, grace=15):
    """SIGTERM the given PIDs (and their process groups), then SIGKILL."""
    def alive(p):
        try:
            with open('/proc/%d/stat' % p) as f:
                return f.read().split(') ')[-1][0] != 'Z'
        except OSError:
            return False
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for p in pids:
        if alive(p):
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)


def start_process(svc):
    os.makedirs(RUN, exist_ok=True)
    os.makedirs(LOGS, exist_ok=True)
    # Our own process left over without a pid file (crash): end it first.
    for port in svc.ports:
        held = [p for p in listeners(port) if p != '?']
        for p in held:
            if is_ours(p):
                log('%s: ending leftover pid %d on port %d' % (svc.name, p,
                                                                port))
                kill_pids([p])
            else:
                raise Error('%s: port %d is held by pid %d (%s), not by '
                            'minicloud' % (svc.name, port, p, cmdline(p)))
    env = dict(os.environ)
    env.update(base_env())
    env.update(svc.env)
    logf = open(svc.logfile, 'ab')
    logf.write(('\n==== minicloud start %s ====\n' % time.ctime()).encode())
    logf.flush()
    kwargs = {}
    if svc.user:
        kwargs.update(user=svc.user, group=svc.user)
    p = subprocess.Popen(
        svc.argv(), env=env, stdin=subprocess.DEVNULL, stdout=logf,
        stderr=subprocess.STDOUT, cwd=(env['HOME'] if svc.user else STATE),
        start_new_session=True, **kwargs)
    logf.close()
    with open(svc.pidfile, 'w') as f:
        f.write('%d %s\n' % (p.pid, starttime(p.pid)))
    return p.pid


def stop_service(svc):
    pid = svc.pid()
    if pid is not None:
        log('stopping %s (pid %d)' % (svc.name, pid))
        if svc.stop_hook:
            svc.stop_hook(svc)
        # first the leader alone (oslo.service and gunicorn stop their
        # children gracefully), then the rest of its process group:
        # gunicorn workers, privsep helpers, epmd, ...
        kill_pids([pid], grace=svc.grace)
        members = [p for p in _group(pid)]
        if members:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
            kill_pids(members, grace=5)
    if svc.after_stop:
        svc.after_stop(svc)
    with contextlib.suppress(OSError):
        os.unlink(svc.pidfile)


def _group(pgid):
    out = []
    for d in os.listdir('/proc'):
        if d.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(d)) == pgid:
                    out.append(int(d))
    return out


_reported = set()


def wait_healthy(services, timeout=180):
    pending = list(services)
    deadline = time.time() + timeout
    last = {}
    while pending:
        for svc in list(pending):
            if svc.pid() is None and (time.sleep(0.5) or svc.pid() is None):
                raise Error('%s exited during start; end of %s:\n%s' % (
                    svc.name, svc.logfile, tail(svc.logfile)))
            ok, detail = svc.health(svc)
            last[svc.name] = detail
            if ok:
                pending.remove(svc)
                if svc.name not in _reported:
                    _reported.add(svc.name)
                    log('%s is up' % svc.name)
        if not pending:
            return
        if time.time() > deadline:
            raise Error('timed out waiting for %s (%s); see %s' % (
                ', '.join(s.name for s in pending),
                '; '.join('%s: %s' % (s.name, last.get(s.name))
                          for s in pending), LOGS))
        time.sleep(0.3)


def start_services(services, wait=True):
    for svc in services:
        if svc.pid() is None:
            log('starting %s' % svc.name)
            start_process(svc)
    if wait:
        wait_healthy(services)
