"""gunicorn entry point: Nova compute API, configured from $MINICLOUD_ETC/nova.

Nova loads the paste pipeline from the first of its config files and the
options from the rest: api-paste.ini (a copy of the venv's) then nova.conf.
"""
import os
import sys

# nova parses sys.argv[1:] (gunicorn's own arguments otherwise)
sys.argv = ['nova-api']

os.environ['OS_NOVA_CONFIG_DIR'] = os.path.join(
    os.environ['MINICLOUD_ETC'], 'nova')
os.environ['OS_NOVA_CONFIG_FILES'] = 'api-paste.ini;nova.conf'

from nova.wsgi.osapi_compute import application  # noqa: E402,F401
