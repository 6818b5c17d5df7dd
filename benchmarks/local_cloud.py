"""The one connection every benchmark uses: to the local minicloud only.

A benchmark creates and deletes resources by the hundred; pointed at a
real cloud by mistake it would cost money and disturb others. So each one
connects through :func:`connect`, which refuses any cloud whose image
endpoint is not on this machine.
"""

LOCAL = ('http://127.0.0.1', 'http://localhost')


def connect(cloud):
    """An openstacksdk Connection to ``cloud``; exits unless it is local."""
    import openstack  # here: the module is imported by scripts before
    # their argument parsing, which should stay fast

    conn = openstack.connect(cloud=cloud)
    endpoint = conn.image.get_endpoint()
    if not endpoint.startswith(LOCAL):
        raise SystemExit(f'refusing to benchmark a non-local cloud: '
                         f'{endpoint}')
    return conn
