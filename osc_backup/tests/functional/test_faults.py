"""The cloud's own explanation of a failure reaches the user.

Cinder records why an asynchronous operation failed as a user message,
which exists from Block Storage microversion 3.3 on; openstacksdk asks for
none by itself, and Cinder answers a plain request with 404. Here a real
upload-to-image fails (its image is deleted under it) and the waiting
helper finds Cinder's message about the volume.
"""

import time


from osc_backup.common import waits
from osc_backup.tests.functional import base


class UserMessageTestCase(base.FunctionalTestCase):
    def setUp(self):
        super().setUp()
        self.conn = self.connect()

    def test_failed_upload_is_explained_by_cinder(self):
        bs = self.conn.block_storage
        vol = self.create_volume(1)
        self.write_random(vol['id'], mib=16)
        self.assertEqual('', waits.user_message(bs, vol['id']))
        response = bs.upload_volume_to_image(
            vol['id'], self.unique_name('ft-fault'), force=False,
            disk_format='raw', container_format='bare')
        # the image goes away under the upload: Cinder fails it
        self.conn.image.delete_image(response['image_id'],
                                     ignore_missing=True)
        deadline = time.time() + base.WAIT_TIMEOUT
        message = ''
        while not message and time.time() < deadline:
            time.sleep(2)
            message = waits.user_message(bs, vol['id'])
        self.wait_for_status('volume', vol['id'], 'available')
        # deleted before Cinder began copying: the upload cannot succeed
        self.assertIn('upload', message.lower(), message)
