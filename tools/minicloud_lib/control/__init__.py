"""tools/minicloud itself: the launcher that installs, configures, starts,
checks and stops the cloud.

Runs under the system python3 with the standard library only (the
modules next to this package, wsgi_*.py and the drivers, run inside the
cloud's own services instead).  One module per group of services:

* ``infrastructure``: MariaDB, RabbitMQ, memcached, the databases;
* ``identity``: Keystone, service users, the catalog, clouds.yaml;
* ``image``: Glance;
* ``key_manager``: Barbican;
* ``block_storage``: Cinder, its volume types, attach/detach/volume-path;
* ``compute``: Nova, Placement, the neutron stub, flavors, server-disk;

and what they share: ``common`` (state dir layout, secrets, helpers),
``processes`` (processes, ports, readiness), ``installation`` (Debian
packages, the cloud's virtualenv), ``client`` (a small REST client),
``services`` (all services in start order, every config, the database
syncs) and ``commands`` (the subcommands of tools/minicloud).
"""
