"""All the cloud's services, in start order, from the module of each
group; and the steps that span the groups: every configuration file
(rewritten on every `up`; cheap and keeps paths current) and the database
schema syncs (run in parallel, each once, marked done in $STATE/done).

Adding a service: its `Service(...)` entry in SERVICES of its group's
module (name, command, ports, health check, start phase), its config in
that module's write_config(), its database in infrastructure.DATABASES
and its schema sync in db_sync_steps(), for an API a wsgi wrapper module
in tools/minicloud_lib, its packages in installation.PIP_PACKAGES, its
user in identity.SERVICE_USERS and its endpoint in identity.CATALOG.  A
new group is a module with SERVICES, write_config() and db_sync_steps(),
listed in GROUPS.
"""

import os
import threading

from minicloud_lib.control import (
    block_storage, compute, identity, image, infrastructure, key_manager)
from minicloud_lib.control.common import (
    DATA, ETC, LOGS, RUN, STATE, Error, done, get_secrets, log, mark_done,
    run)

# in start order (and the order of `status` and `ports`)
GROUPS = (infrastructure, identity, image, key_manager, block_storage,
          compute)
SERVICES = [svc for group in GROUPS for svc in group.SERVICES]
BY_NAME = {s.name: s for s in SERVICES}


def write_configs():
    get_secrets()   # secrets.json first (the first call writes it)
    for d in (ETC, DATA, LOGS, RUN, os.path.join(STATE, 'home')):
        os.makedirs(d, exist_ok=True)
    os.chmod(STATE, 0o755)  # mysql and rabbitmq must reach their dirs
    for group in GROUPS:
        group.write_config()


def db_syncs():
    steps = {}
    for group in GROUPS:
        steps.update(group.db_sync_steps())
    todo = {k: v for k, v in steps.items() if not done(k)}
    if not todo:
        return
    log('syncing databases: %s' % ', '.join(sorted(todo)))
    errors = []

    def one(step, cmds):
        try:
            env = {'HOME': key_manager.HOME} \
                if step == 'db-barbican' else None
            for cmd in (cmds if isinstance(cmds[0], (list, tuple))
                        else [cmds]):
                cmd, ok = cmd if isinstance(cmd, tuple) else (cmd, (0,))
                run(cmd, env=env, ok=ok)
            mark_done(step)
        except Exception as e:
            errors.append(str(e))
    threads = [threading.Thread(target=one, args=item)
               for item in todo.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise Error('\n'.join(errors))
