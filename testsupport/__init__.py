"""Support for the tests, the benchmark and the demo (not installed with girderfs).

``girder_server``: a real Girder 5 server on in-memory mongomock; ``fast_index``: hash indexes
that keep mongomock fast on large trees; ``mounting``: the ``girderfs`` command as they run it;
``faultproxy``: a recording, fault-injecting HTTP proxy; ``objectstore``: a moto S3 server
behind one, as Girder's S3 assetstore.
"""
