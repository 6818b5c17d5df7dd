"""Infrastructure services from Debian: MariaDB (every service's
database), RabbitMQ (Cinder's and Nova's messaging) and memcached
(Keystone's token cache): how they run, their configuration, the MariaDB
data directory and the databases and their user.
"""

import contextlib
import os
import shutil
import subprocess
import time

from minicloud_lib.control.common import (
    DATA, DONE, ETC, HOST, LOGS, RUN, Error, get_secrets, ini, log, run,
    write_if_changed)
from minicloud_lib.control.processes import Service, listeners, tcp_greeting

DATABASES = ['keystone', 'glance', 'cinder', 'barbican', 'placement',
             'nova_api', 'nova', 'nova_cell0']

MYSQL_SOCKET = os.path.join(RUN, 'mysqld', 'mysqld.sock')


def mysql(sql, timeout=20):
    return subprocess.run(
        ['mariadb', '--socket', MYSQL_SOCKET, '-uroot', '-N', '-B', '-e', sql],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout)


def service_reported(db, binary, started):
    """The service has reported to the DB since its process started
    (Cinder's and Nova's `services` tables)."""
    try:
        p = mysql("SET time_zone='+00:00'; SELECT "
                  "UNIX_TIMESTAMP(COALESCE(updated_at, created_at)) FROM "
                  "%s.services WHERE deleted=0 AND `binary`='%s' AND "
                  "host LIKE 'minicloud%%'" % (db, binary), timeout=5)
    except subprocess.TimeoutExpired:
        return False, 'database query timed out'
    if p.returncode != 0:
        return False, 'database: %s' % p.stderr.strip()[:200]
    stamps = [float(x) for x in p.stdout.split() if x and x != 'NULL']
    if not stamps:
        return False, 'not registered yet'
    newest = max(stamps)
    if newest < int(started):   # updated_at has whole seconds
        return False, 'no report since start'
    if time.time() - newest > 60:
        return False, 'last report %ds ago' % (time.time() - newest)
    return True, 'reporting'


def reporting_service(db, binary, argv, grace, phase=2):
    """A Cinder or Nova service without a port, `binary`: healthy once it
    has reported to the `services` table of database `db` since it
    started."""
    return Service(binary, argv, phase=phase, grace=grace,
                   health=lambda s: service_reported(db, binary,
                                                     s.started_at()))


def rabbit_env():
    return {
        'HOME': '/var/lib/rabbitmq',
        'RABBITMQ_NODENAME': 'rabbit@localhost',
        'RABBITMQ_NODE_IP_ADDRESS': HOST,
        'RABBITMQ_NODE_PORT': '5672',
        'ERL_EPMD_ADDRESS': HOST,
        'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS':
            '-kernel inet_dist_use_interface {127,0,0,1}',
        'RABBITMQ_DIST_PORT': '25672',
        'RABBITMQ_MNESIA_BASE': os.path.join(DATA, 'rabbitmq', 'mnesia'),
        'RABBITMQ_LOG_BASE': os.path.join(LOGS, 'rabbitmq'),
        'RABBITMQ_LOGS': '-',
        'RABBITMQ_ENABLED_PLUGINS_FILE':
            os.path.join(DATA, 'rabbitmq', 'enabled_plugins'),
        'RABBITMQ_CONFIG_FILE':
            os.path.join(DATA, 'rabbitmq', 'rabbitmq.conf'),
        'RABBITMQ_PID_FILE': os.path.join(DATA, 'rabbitmq', 'rabbit.pid'),
    }


def rabbitmqctl(*args, timeout=30):
    env = dict(os.environ)
    env.update(rabbit_env())
    return subprocess.run(
        ['/usr/lib/rabbitmq/bin/rabbitmqctl', '-n', 'rabbit@localhost',
         *args], env=env, user='rabbitmq', group='rabbitmq',
        cwd='/var/lib/rabbitmq', stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout)


def rabbit_stop(service):
    with contextlib.suppress(Exception):
        rabbitmqctl('stop', timeout=30)


def epmd_kill(service):
    # beam starts epmd itself if ours was not up yet; it daemonizes out of
    # our process group: ask it to exit (it listens on 127.0.0.1 only).
    if listeners(4369):
        with contextlib.suppress(Exception):
            subprocess.run(['epmd', '-kill'], env=dict(
                os.environ, ERL_EPMD_ADDRESS=HOST), capture_output=True,
                timeout=10)


SERVICES = [
    Service('mariadb', lambda: [
        '/usr/sbin/mariadbd',
        '--defaults-file=' + os.path.join(ETC, 'my.cnf')],
        ports=(3306,), phase=0,
        health=lambda s: tcp_greeting(3306)),
    Service('rabbitmq', lambda: [
        'sh', '-c', 'epmd -address 127.0.0.1 & sleep 0.2; '
        'exec /usr/lib/rabbitmq/bin/rabbitmq-server'],
        ports=(5672, 25672, 4369), phase=0, user='rabbitmq', env=rabbit_env(),
        health=lambda s: tcp_greeting(5672, b'AMQP\x00\x00\x09\x01', b'\x01'),
        stop=rabbit_stop, after_stop=epmd_kill),
    Service('memcached', lambda: [
        '/usr/bin/memcached', '-u', 'memcache', '-l', HOST, '-p', '11211',
        '-U', '0', '-m', '64'],
        ports=(11211,), phase=0,
        health=lambda s: tcp_greeting(11211, b'version\r\n', b'VERSION')),
]


def write_config():
    """my.cnf and RabbitMQ's files."""
    # MariaDB
    mysql_dir = os.path.join(DATA, 'mysql')
    os.makedirs(mysql_dir, exist_ok=True)
    os.makedirs(os.path.dirname(MYSQL_SOCKET), exist_ok=True)
    shutil.chown(mysql_dir, 'mysql', 'mysql')
    shutil.chown(os.path.dirname(MYSQL_SOCKET), 'mysql', 'mysql')
    write_if_changed(os.path.join(ETC, 'my.cnf'), ini({'mysqld': {
        'user': 'mysql',
        'datadir': mysql_dir,
        'socket': MYSQL_SOCKET,
        'pid-file': os.path.join(os.path.dirname(MYSQL_SOCKET), 'mysqld.pid'),
        'bind-address': HOST,
        'port': 3306,
        'skip-name-resolve': 1,
        'character-set-server': 'utf8',
        'collation-server': 'utf8_general_ci',
        'max_connections': 1000,
        'innodb_buffer_pool_size': '256M',
        'innodb_flush_log_at_trx_commit': 2,
        'innodb_log_file_size': '64M',
        'skip-log-bin': 1,
    }, 'client': {'socket': MYSQL_SOCKET}}))

    # RabbitMQ
    rdir = os.path.join(DATA, 'rabbitmq')
    for d in (rdir, os.path.join(rdir, 'mnesia'),
              os.path.join(LOGS, 'rabbitmq')):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, 'rabbitmq', 'rabbitmq')
    write_if_changed(os.path.join(rdir, 'enabled_plugins'), '[].\n')
    write_if_changed(os.path.join(rdir, 'rabbitmq.conf'),
                     'loopback_users.guest = true\n'
                     'listeners.tcp.default = 127.0.0.1:5672\n')


def db_sync_steps():
    """None: the databases themselves are made by create_databases()."""
    return {}


def init_mariadb_datadir():
    if os.path.isdir(os.path.join(DATA, 'mysql', 'mysql')):
        return
    log('initialising the MariaDB data directory')
    # a new database: every one-time step that wrote into it runs again
    shutil.rmtree(DONE, ignore_errors=True)
    run(['mariadb-install-db',
         '--defaults-file=' + os.path.join(ETC, 'my.cnf'),
         '--user=mysql', '--skip-test-db',
         '--auth-root-authentication-method=socket'])


def create_databases():
    pw = get_secrets()['db']
    sql = []
    for db in DATABASES:
        sql.append('CREATE DATABASE IF NOT EXISTS %s CHARACTER SET utf8;' % db)
    for host in ('127.0.0.1', 'localhost'):
        sql.append("CREATE USER IF NOT EXISTS 'openstack'@'%s' "
                   "IDENTIFIED BY '%s';" % (host, pw))
        for db in DATABASES:
            sql.append("GRANT ALL ON %s.* TO 'openstack'@'%s';" % (db, host))
    p = mysql(' '.join(sql))
    if p.returncode != 0:
        raise Error('creating databases failed: %s' % p.stderr)
