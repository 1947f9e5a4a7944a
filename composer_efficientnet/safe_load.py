"""Read checkpoints without running code that they carry.

A ``torch.save`` file is a pickle, and a pickle can name any importable function to call while it is read
(``os.system`` with a command, say): ``torch.load(weights_only=False)``, which Composer uses, runs it.
:func:`read_checkpoint` reads with ``weights_only=True``, which builds only tensors, containers and the types
allowed here: the plain types a Composer checkpoint holds besides those (see :func:`checkpoint_globals`). A file
that names anything else is refused with an :class:`UnsafeCheckpointError` naming the first such global. A
checkpoint archive (a Composer ``.tar``, a ``.pt.gz``) is unpacked first, its members checked, into a private
temporary folder (:mod:`composer_efficientnet.archives`).
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import zipfile
from typing import Any, List, Optional, Union

import torch

from composer_efficientnet.archives import unpacked

__all__ = ['UnsafeCheckpointError', 'can_map', 'checkpoint_globals', 'disallowed_globals', 'read_checkpoint',
           'TRUST_ADVICE']

#: How a user loads a file that is refused, when they trust it (a recipe setting).
TRUST_ADVICE = 'if you trust the file and where it came from, set load_trusted: true to load it as Composer does'


class UnsafeCheckpointError(ValueError):
    """A checkpoint that names code to run while it is read; the message names the first such global.

    Attributes:
        global_name: that global, as ``module.name`` (``posix.system``).
    """

    def __init__(self, shown: str, global_name: str) -> None:  # shown: the file, as the message names it
        super().__init__(f'{shown} would run code when loaded: it needs {global_name}, which is not one of the '
                         f'plain types a Composer checkpoint holds; {TRUST_ADVICE}')
        self.global_name = global_name


@functools.lru_cache(maxsize=1)
def checkpoint_globals() -> list:
    """The plain types besides tensors and containers in a Composer checkpoint, allowed while reading one with
    ``weights_only``: time spans (the timestamp's wall-clock times), the torch version string, numpy arrays and
    their dtypes (the numpy random state). Each is a type (or numpy's array constructor), not a callable that
    runs code; optimizers, schedulers, EMA, SWA and our callbacks store only tensors, numbers and strings."""
    import datetime

    import numpy as np
    from torch.torch_version import TorchVersion
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy.core or numpy._core, as this numpy pickles it
    numpy_dtypes = getattr(np, 'dtypes', None)  # numpy 1.25 and later
    dtypes = [getattr(numpy_dtypes, name) for name in dir(numpy_dtypes) if name.endswith('DType')]
    # under either module name, whichever numpy wrote the checkpoint
    return [datetime.timedelta, TorchVersion, np.dtype, np.ndarray, *dtypes,
            (reconstruct, 'numpy.core.multiarray._reconstruct'), (reconstruct, 'numpy._core.multiarray._reconstruct')]


def _first_disallowed(error: Exception, path: str) -> Optional[str]:
    """The global that stopped torch's ``weights_only`` reader: named in its message, else found in the file;
    ``None`` when the pickle failed otherwise (a damaged file)."""
    named = re.search(r'GLOBAL (\S+)', str(error))
    if named:
        return named[1] if '.' in named[1] else f'builtins.{named[1]}'  # torch leaves builtins' module out
    try:
        found = disallowed_globals(path)
    except Exception:  # noqa: BLE001 - not a zip-format torch file (legacy or damaged): torch's error stands
        return None
    return found[0] if found else None


def can_map(path: Union[str, os.PathLike]) -> bool:
    """Whether ``torch.load(path, mmap=True)`` can map the tensors of a ``torch.save`` file: only the zip format
    (torch.save's default) can; a legacy-format file (``_use_new_zipfile_serialization=False``) is read whole."""
    with open(path, 'rb') as file:
        return file.read(4) == b'PK\x03\x04' and zipfile.is_zipfile(path)


def read_checkpoint(path: Union[str, os.PathLike], shown: Optional[str] = None, map_location: Any = 'cpu',
                    mmap: bool = False) -> Any:
    """``torch.load(path)`` without running code: only tensors, containers and :func:`checkpoint_globals`.

    Args:
        path: a ``torch.save`` file, or an archive of one (a Composer ``.tar``, a ``.pt.gz``), which is unpacked
            into a private temporary folder, its members checked (:func:`~composer_efficientnet.archives.unpacked`).
        shown: how the error names the file (a download's original address); ``'path'`` by default.
        map_location: as for ``torch.load``.
        mmap: map the tensors from the file rather than reading them, where its format allows (see
            :func:`can_map`; a legacy-format file is read whole).

    Raises:
        UnsafeCheckpointError: the file names another global.
        ArchiveError: an archive that is not unpacked (a member that would escape its folder, a link, ...).
        Other read failures (a damaged file) are torch's.
    """
    path = os.fspath(path)
    with unpacked(path, shown) as plain:
        try:
            with torch.serialization.safe_globals(checkpoint_globals()):
                return torch.load(plain, map_location=map_location, mmap=mmap and can_map(plain), weights_only=True)
        except pickle.UnpicklingError as error:
            disallowed = _first_disallowed(error, plain)
            if disallowed is None:
                raise
            raise UnsafeCheckpointError(shown or f"'{path}'", disallowed) from None


def disallowed_globals(path: Union[str, os.PathLike]) -> List[str]:
    """Every global in a ``torch.save`` file (or an archive of one) that :func:`read_checkpoint` refuses, sorted
    (empty for ours)."""
    with unpacked(os.fspath(path)) as plain, torch.serialization.safe_globals(checkpoint_globals()):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(plain))
