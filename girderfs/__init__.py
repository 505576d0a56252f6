"""girderfs: a FUSE filesystem over a Girder data management server."""

__version__ = '0.1.0'


def mounted(*args, **kwargs):
    """Mount a Girder server for a ``with`` block; see :func:`girderfs.api.mounted`."""
    from .api import mounted as _mounted

    return _mounted(*args, **kwargs)


__all__ = ['mounted']
