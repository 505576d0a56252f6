"""girderfs: a FUSE filesystem over a Girder data management server."""

__version__ = '0.1.0'
