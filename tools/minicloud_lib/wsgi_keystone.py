"""gunicorn entry point: Keystone, configured from $MINICLOUD_ETC/keystone."""
import os
import sys

# keystone parses sys.argv[1:] (gunicorn's own arguments otherwise)
sys.argv = ['keystone']

os.environ['OS_KEYSTONE_CONFIG_DIR'] = os.path.join(
    os.environ['MINICLOUD_ETC'], 'keystone')
os.environ['OS_KEYSTONE_CONFIG_FILES'] = 'keystone.conf'

from keystone.wsgi.api import application  # noqa: E402,F401
