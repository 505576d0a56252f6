"""A Girder plugin for the tests only: the two DIVE endpoints the README's recipes call.

DIVE (Kitware/dive, ``dive_server``) is a large Girder plugin with workers; these endpoints
keep what a client of it can observe, without jobs:

- ``POST dive_rpc/postprocess/{id}`` (write access): DIVE's preconditions, checked as DIVE
  checks them: the folder's ``meta.fps``, then ``meta.type``, must be present, else 400
  "fps missing from metadata". Then, as DIVE does, every annotation item of the folder (``.csv``,
  ``.json``, ``.yml``/``.yaml``), oldest first, is imported and moved into the folder's
  ``auxiliary`` subfolder with ``meta.processed``; the last one imported becomes the dataset's
  annotations (kept as it was given: nothing is converted). Unless ``skipJobs``, a folder holding a
  video or images becomes a dataset (``meta.annotate``), as DIVE's transcoding jobs leave it.
- ``GET dive_annotation/export?folderId=`` (read access): 404 "Source folder is not a valid DIVE
  dataset" unless ``meta.annotate`` is true (DIVE's ``verify_dataset``); else the annotations
  imported last, as an attachment (an empty body before any).
- ``GET dive_stub/calls[?folderId=]``: every postprocess call so far, refused ones included
  (folder id, user login, parameters, the names imported or the error), oldest first.

Loaded by ``testsupport/girder_server.py --dive-stub``, which puts this directory (with its
``girder.plugin`` entry point in ``girderfs_dive_stub-0.1.0.dist-info``) on the server's path.
"""

from __future__ import annotations

import threading

from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.api.rest import Resource, setContentDisposition, setRawResponse, setResponseHeader
from girder.constants import AccessType, TokenScope
from girder.exceptions import RestException
from girder.models.file import File
from girder.models.folder import Folder
from girder.models.item import Item
from girder.plugin import GirderPlugin

ANNOTATION_NAMES = r'\.(csv|json|ya?ml)$'
MEDIA_NAMES = r'\.(mp4|webm|avi|mov|wmv|mpg|mpeg|mp2|ogg|flv|png|jpg|jpeg|sgi|bmp|pgm)$'
TRUTHY = (True, 'true', 'True', 1)  # DIVE's TRUTHY_META_VALUES
ANNOTATIONS_FIELD = 'diveStubAnnotations'  # on the folder document, not in its meta

_calls: list[dict] = []
_calls_lock = threading.Lock()


def _record(call: dict) -> None:
    with _calls_lock:
        _calls.append(call)


class Rpc(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.resourceName = 'dive_rpc'
        self.route('POST', ('postprocess', ':id'), self.postprocess)

    @access.user
    @autoDescribeRoute(
        Description('DIVE stub: import a dataset folder\'s annotation files')
        .modelParam('id', 'The dataset folder', model=Folder, level=AccessType.WRITE)
        .param('skipJobs', 'Skip what DIVE does in jobs', paramType='formData',
               dataType='boolean', default=False, required=False)
        .param('skipTranscoding', 'Accepted, as DIVE does', paramType='formData',
               dataType='boolean', default=False, required=False)
    )
    def postprocess(self, folder: dict, skipJobs: bool, skipTranscoding: bool):
        user = self.getCurrentUser()
        call = {'folderId': str(folder['_id']), 'user': user['login'], 'skipJobs': skipJobs,
                'skipTranscoding': skipTranscoding}
        meta = folder.get('meta') or {}
        for key in ('fps', 'type'):  # DIVE's order
            if meta.get(key) is None:
                call['error'] = f'{key} missing from metadata'
                _record(call)
                raise RestException(call['error'])
        if not skipJobs and meta.get('annotate') not in TRUTHY and next(iter(
                Folder().childItems(folder, filters={'lowerName': {'$regex': MEDIA_NAMES}})),
                None) is not None:
            folder = Folder().setMetadata(folder, {'annotate': True})
        auxiliary = Folder().createFolder(folder, 'auxiliary', reuseExisting=True, creator=user)
        imported, annotations = [], None
        for item in list(Folder().childItems(
                folder, filters={'lowerName': {'$regex': ANNOTATION_NAMES}},
                sort=[('created', 1)])):
            file = next(iter(Item().childFiles(item)), None)
            if file is None:
                call['error'] = 'Item had no associated files'
                _record(call)
                raise RestException(call['error'])
            data = b''.join(File().download(file, headers=False)())
            annotations = {'name': file['name'], 'text': data.decode('utf-8', 'replace')}
            item.setdefault('meta', {})['processed'] = True
            Item().move(item, auxiliary)
            imported.append(file['name'])
        if annotations is not None:
            Folder().update({'_id': folder['_id']}, {'$set': {ANNOTATIONS_FIELD: annotations}})
        call['imported'] = imported
        _record(call)
        # DIVE answers (folder, warnings)
        return [Folder().filter(Folder().load(folder['_id'], force=True), user), []]


class Annotation(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.resourceName = 'dive_annotation'
        self.route('GET', ('export',), self.export)

    @access.public(scope=TokenScope.DATA_READ, cookie=True)
    @autoDescribeRoute(
        Description('DIVE stub: the annotations a dataset imported last')
        .modelParam('folderId', 'The dataset folder', model=Folder, level=AccessType.READ,
                    paramType='query')
        .param('format', 'viame_csv or dive_json (only names the attachment here)',
               required=False, default='viame_csv', enum=['viame_csv', 'dive_json'])
    )
    def export(self, folder: dict, format: str):
        if (folder.get('meta') or {}).get('annotate') not in TRUTHY:
            raise RestException('Source folder is not a valid DIVE dataset', code=404)
        stored = folder.get(ANNOTATIONS_FIELD) or {'text': ''}
        csv = format == 'viame_csv'
        setContentDisposition(folder['name'] + ('.csv' if csv else '.dive.json'))
        setResponseHeader('Content-Type', 'text/csv' if csv else 'application/json')
        setRawResponse()
        return stored['text'].encode('utf-8')


class Calls(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.resourceName = 'dive_stub'
        self.route('GET', ('calls',), self.calls)

    @access.user
    @autoDescribeRoute(
        Description('DIVE stub: the postprocess calls so far, oldest first')
        .param('folderId', 'Only the calls on this folder', required=False)
    )
    def calls(self, folderId: str | None):
        with _calls_lock:
            return [c for c in _calls if folderId is None or c['folderId'] == folderId]


class DiveStubPlugin(GirderPlugin):
    DISPLAY_NAME = 'DIVE stub (tests)'

    def load(self, info: dict) -> None:
        info['apiRoot'].dive_rpc = Rpc()
        info['apiRoot'].dive_annotation = Annotation()
        info['apiRoot'].dive_stub = Calls()
