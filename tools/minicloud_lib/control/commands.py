"""The subcommands of tools/minicloud (up, down, status, stop, start, env,
ports, attach, detach, volume-path, server-disk, quiesce-log) and main(), which
dispatches to them, turns errors into one `minicloud: error: ...` line
and an exit status.
"""

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time

from minicloud_lib.control.block_storage import (
    cinder_types, cmd_attach, cmd_detach, cmd_volume_path)
from minicloud_lib.control.common import CLOUDS_YAML, STATE, Error, done, log
from minicloud_lib.control.compute import (
    cmd_quiesce_log, cmd_server_disk, nova_discover_hosts, nova_flavors,
    nova_host_ready)
from minicloud_lib.control.identity import (
    keystone_resources, keystone_setup, write_clouds_yaml)
from minicloud_lib.control.infrastructure import (
    create_databases, init_mariadb_datadir)
from minicloud_lib.control.installation import ensure_apt, ensure_venv
from minicloud_lib.control.processes import (
    kill_pids, listeners, our_pids, start_services, stop_service,
    wait_healthy)
from minicloud_lib.control.services import (
    BY_NAME, SERVICES, db_syncs, write_configs)

@contextlib.contextmanager
def state_lock():
    os.makedirs(STATE, exist_ok=True)
    with open(os.path.join(STATE, '.lock'), 'w') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def cmd_up(args):
    t0 = time.time()
    with state_lock():
        if all(svc.check()[0] for svc in SERVICES) and os.path.exists(
                CLOUDS_YAML) and done('cinder-types') and done(
                'nova-flavors') and all(nova_host_ready()):
            log('all services healthy (%.1fs)' % (time.time() - t0))
            return 0
        ensure_apt()
        ensure_venv()
        write_configs()
        init_mariadb_datadir()
        infra = [s for s in SERVICES if s.phase == 0]
        start_services(infra, wait=False)
        # the DB work overlaps RabbitMQ's boot
        wait_healthy([BY_NAME['mariadb']])
        create_databases()
        db_syncs()
        keystone_setup()
        wait_healthy(infra)
        start_services([s for s in SERVICES if s.phase == 1])
        keystone_resources()
        rest = [s for s in SERVICES if s.phase == 2]
        start_services(rest, wait=False)
        # nova-compute registers its resource provider at start (Placement
        # must answer) and pings the conductor first (a ping sent before the
        # conductor consumes costs a 10 s timeout)
        wait_healthy([BY_NAME['placement'], BY_NAME['nova-conductor']])
        compute = [s for s in SERVICES if s.phase == 3]
        start_services(compute, wait=False)
        wait_healthy(rest + compute)
        nova_discover_hosts()
        cinder_types()
        nova_flavors()
        write_clouds_yaml()
    log('up: all services healthy (%.1fs); eval "$(%s env)"' % (
        time.time() - t0, sys.argv[0]))
    return 0


def cmd_down(args):
    with state_lock():
        # APIs, cinder and nova services together, then keystone, then
        # infra
        for tier in (2, 1, 0):
            threads = [threading.Thread(target=stop_service, args=(svc,))
                       for svc in SERVICES if min(svc.phase, 2) == tier]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        leftovers = our_pids()
        if leftovers:
            log('ending leftover processes: %s' % leftovers)
            kill_pids(leftovers)
    busy = {port: listeners(port) for svc in SERVICES for port in svc.ports}
    busy = {k: v for k, v in busy.items() if v}
    if busy:
        log('still listening: %s' % busy)
        return 1
    log('down: all services stopped')
    return 0


def cmd_status(args):
    bad = []
    for svc in SERVICES:
        ok, detail = svc.check()
        print('%-17s %-5s %s' % (svc.name, 'ok' if ok else 'DOWN', detail))
        if not ok:
            bad.append(svc.name)
    if bad:
        print('not healthy: %s' % ' '.join(bad))
        return 1
    return 0


def _service_arg(args):
    if len(args) != 1 or args[0] not in BY_NAME:
        raise Error('expected one service name: %s' % ' '.join(BY_NAME))
    return BY_NAME[args[0]]


def cmd_stop(args):
    svc = _service_arg(args)
    with state_lock():
        stop_service(svc)
    return 0


def cmd_start(args):
    svc = _service_arg(args)
    with state_lock():
        write_configs()
        start_services([svc])
    return 0


def cmd_ports(args):
    """The TCP ports the cloud listens on, one a line (for checks)."""
    for svc in SERVICES:
        for port in svc.ports:
            print(port)
    return 0


def cmd_env(args):
    print('export OS_CLIENT_CONFIG_FILE=%s' % CLOUDS_YAML)
    return 0


COMMANDS = {
    'up': cmd_up, 'down': cmd_down, 'status': cmd_status,
    'stop': cmd_stop, 'start': cmd_start, 'env': cmd_env, 'ports': cmd_ports,
    'attach': cmd_attach, 'detach': cmd_detach,
    'volume-path': cmd_volume_path, 'server-disk': cmd_server_disk,
    'quiesce-log': cmd_quiesce_log,
}


def main(argv, usage):
    """Run the subcommand argv[0] with the arguments argv[1:]; without a
    known subcommand print `usage` (tools/minicloud's docstring) and
    return 2."""
    if len(argv) < 1 or argv[0] not in COMMANDS:
        print(usage.strip(), file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except Error as e:
        log('error: %s' % e)
        return 1
    except subprocess.TimeoutExpired as e:
        log('error: timed out: %s' % e)
        return 1
