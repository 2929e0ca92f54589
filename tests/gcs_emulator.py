"""A Cloud Storage emulator for tests/test_cloud.py: `python gcs_emulator.py` serves the Cloud
Storage JSON API (the `gcp-storage-emulator` package, in memory) on a free port of 127.0.0.1,
prints `port N` once it listens, and serves until its standard input closes.

The package serves what gcsfs, array_record and google-cloud-storage ask of it, but not all that
TensorStore (Orbax's array writer) does. Measured with TENSORSTORE_CURL_VERBOSE=1: its answers to
object reads lack the `x-goog-generation` header, which TensorStore takes as the object's version
("Malformed StorageGeneration" once it rereads an OCDBT manifest it wrote), and it ignores the
preconditions of TensorStore's writes and cached reads (`ifGenerationMatch`,
`ifGenerationNotMatch`). `_add_generations` adds those three around the package's handlers, as
Cloud Storage answers them, for media and multipart uploads (the run lock's). gcsfs renames (a damaged checkpoint moved aside) with objects.move,
which the package answers 501, and gcsfs retries that for 30 s before copying instead: `_add_move`
serves it as a copy and a delete. The listen queue is lengthened: the server answers one request
at a time and TensorStore opens many connections at once.

The emulator has no accounts: `_add_permissions` answers as Cloud Storage does (403) for three
buckets where this machine's account lacks a permission: `no-access` (any), `read-only` (writes)
and `objects-only` (the bucket's own metadata, storage.buckets.get, which
roles/storage.objectAdmin does not grant). Every other bucket is the package's, unchanged.
"""
from http import HTTPStatus
import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket, name) -> str:
  """The object's generation, '0' when there is none (Cloud Storage's 'does not exist')."""
  try:
    return str(storage.get_file_obj(bucket, name)['generation'])
  except NotFound:
    return '0'


def _failed_precondition(request, current: str) -> bool:
  match = request.query.get('ifGenerationMatch')
  return match is not None and match[0] != current


def _add_generations():
  download, insert = objects.download, objects.insert

  def download_with_generation(request, response, storage, *args, **kwargs):
    current = _generation(storage, request.params['bucket_name'], request.params['object_id'])
    not_match = request.query.get('ifGenerationNotMatch')
    if current != '0' and not_match is not None and not_match[0] == current:
      response.status = HTTPStatus.NOT_MODIFIED
    elif _failed_precondition(request, current):
      response.status = HTTPStatus.PRECONDITION_FAILED
    else:
      download(request, response, storage, *args, **kwargs)
    if current != '0':
      response['x-goog-generation'] = current
      response['x-goog-metageneration'] = '1'

  def insert_if_generation_matches(request, response, storage, *args, **kwargs):
    name = request.query.get('name')
    if request.query.get('ifGenerationMatch') is not None:
      body = request.data  # read before answering; a multipart upload names the object in it
      if name is None and request.query.get('uploadType') == ['multipart']:
        name = [body['meta'].get('name')]
    if name is not None and request.query.get('ifGenerationMatch') is not None:
      if _failed_precondition(request, _generation(storage, request.params['bucket_name'],
                                                   name[0])):
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    return insert(request, response, storage, *args, **kwargs)

  replaced = {download: download_with_generation, insert: insert_if_generation_matches}
  objects.download, objects.insert = download_with_generation, insert_if_generation_matches
  for _, handlers in server.HANDLERS:
    for method, handler in handlers.items():
      handlers[method] = replaced.get(handler, handler)


def _add_move():
  def move(request, response, storage, *args, **kwargs):
    request.params['dest_bucket_name'] = request.params['bucket_name']
    objects.copy(request, response, storage, *args, **kwargs)
    if response.status == HTTPStatus.OK:
      storage.delete_file(request.params['bucket_name'], request.params['object_id'])

  route = (rf'^{server.settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)'
           rf'/moveTo/o/(?P<dest_object_id>.*[^/]+)$', {'POST': move})
  server.HANDLERS = (route,) + server.HANDLERS


ACCESS = {'no-access': 'none', 'read-only': 'read', 'objects-only': 'objects'}  # bucket -> what
# the account may do

def _add_permissions():
  def forbid(handler):
    def handle(request, response, storage, *args, **kwargs):
      bucket = (request.params or {}).get('bucket_name')
      write = request.method not in ('GET', 'HEAD')
      metadata = request.path.rstrip('/').endswith(f'/b/{bucket}')
      access = ACCESS.get(bucket)
      if (access == 'none' or (access == 'read' and write) or
          (access == 'objects' and metadata)):
        request.data  # pylint: disable=pointless-statement  # read the body before answering
        permission = ('storage.buckets.get' if metadata else
                      'storage.objects.' + ('create' if write else 'list'))
        response.status = HTTPStatus.FORBIDDEN
        response.json({'error': {'code': 403, 'message': (
            f'rsnets-test@example.iam.gserviceaccount.com does not have {permission} access to '
            f"the Google Cloud Storage bucket. Permission '{permission}' denied on resource (or "
            f'it may not exist).')}})
        return None
      return handler(request, response, storage, *args, **kwargs)
    return handle

  for _, handlers in server.HANDLERS:
    for method, handler in handlers.items():
      handlers[method] = forbid(handler)


def main():
  _add_generations()
  _add_move()
  _add_permissions()
  server.server.HTTPServer.request_queue_size = 256
  emulator = server.create_server('127.0.0.1', 0, in_memory=True)
  emulator.start()
  port = emulator._api._httpd.server_address[1]  # pylint: disable=protected-access
  print(f'port {port}', flush=True)
  try:
    sys.stdin.read()  # until the test closes the pipe (or terminates this process)
  finally:
    emulator.stop()


if __name__ == '__main__':
  main()
