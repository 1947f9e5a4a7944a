"""Unpack checkpoint archives (``.tar``, ``.tar.gz``, ``.pt.gz``, ...) without writing outside a private folder.

Composer 0.32.1 unpacks a ``.tar`` checkpoint with ``tarfile.extractall`` and no filter, before anything checks
it: a member named ``../../x`` or ``/abs/path`` is written there (into a virtual environment's site-packages, a
``.pth`` file runs code at the next Python start). It decompresses a ``.pt.gz`` into the file beside it without
the ``.gz``, writing over a checkpoint of that name. Here an archive is unpacked only into a private temporary
folder (:func:`unpacked`), after every member is checked: files and folders only (no links, devices or pipes),
names inside the folder (neither absolute nor with ``..``), at most :data:`MAX_MEMBERS` members and
:data:`MAX_BYTES` bytes. A compressed file is decompressed into that folder too. While
:func:`composer_unpacks_checked` is active, Composer unpacks the archives it loads (local or downloaded) the same
way, into its own temporary folder. Whether a file is an archive is read from its name, as Composer decides,
unless its content is a plain torch file (a zip named ``.pth.tar``), and for other names from its content. An
archive that breaks a rule is an :class:`ArchiveError` naming it and the member, and nothing of it is written.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import PurePosixPath
from typing import IO, Callable, Dict, Iterator, List, Optional, Tuple

from composer.utils import dist, get_file, is_compressed_pt, is_tar
from composer.utils import checkpoint as composer_checkpoint

__all__ = ['ArchiveError', 'MAX_BYTES', 'MAX_MEMBERS', 'STATES_FILENAME', 'archive_kind',
           'composer_unpacks_checked', 'unpack', 'unpacked']

#: The member of a Composer ``.tar`` checkpoint that holds the checkpoint (Composer's ``_COMPOSER_STATES_FILENAME``).
STATES_FILENAME = 'composer_states.pt'
#: Bounds on what one archive may unpack to: a checkpoint archive holds one file (and its folder).
MAX_MEMBERS = 1000
MAX_BYTES = 64 * 2**30
#: Composer 0.32.1's names this module relies on (tests/test_composer_private_api.py checks each; tests/test_archives.py
#: that ``load_checkpoint`` still calls it through the module): :func:`composer_unpacks_checked` replaces the
#: ``download_checkpoint`` that fetches and unpacks every monolithic checkpoint Composer loads.
COMPOSER_PRIVATE_API = (
    ('composer.utils.checkpoint', 'download_checkpoint', ('path', 'node_checkpoint_folder', 'object_store',
                                                          'progress_bar')),
)

#: How a compressed stream starts, and the stdlib opener that reads it (``None``: Composer's command-line tool).
_COMPRESSIONS: List[Tuple[bytes, str, Optional[Callable[[str], IO[bytes]]]]] = [
    (b'\x1f\x8b', 'gz', gzip.open), (b'BZh', 'bz2', bz2.open), (b'\xfd7zXZ\x00', 'xz', lzma.open),
    (b'\x28\xb5\x2f\xfd', 'zst', None), (b'\x04\x22\x4d\x18', 'lz4', None), (b'\x89LZO', 'lzo', None)]
_PLAIN_TORCH_STARTS = (b'PK\x03\x04', b'\x80')  # torch.save's zip format, and the legacy format's pickle


class ArchiveError(ValueError):
    """A checkpoint archive that is not unpacked: a member that would escape its folder or is not a plain file
    or folder, too many or too large members, or a file that cannot be read as the archive its name says. The
    message names the archive (as given) and the member."""


def _head(path: str, size: int = 8) -> bytes:
    with open(path, 'rb') as file:
        return file.read(size)


def _is_tar_content(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, tarfile.TarError):
        return False


def archive_kind(path: str) -> Optional[str]:
    """``'tar'`` for a tar archive (compressed or not), ``'compressed'`` for a compressed file, ``None`` for a plain
    ``torch.save`` file (or anything else, for torch to read or refuse). By name first, as Composer decides
    (``.tar``, ``.tar.gz``, ``.tgz``; ``.pt.gz``, ``.pt.zst``, ...), unless the content is a plain torch file (a
    zip named ``.pth.tar`` is one); then, for other names, by content."""
    head = _head(path)
    compressed = any(head.startswith(magic) for magic, _, _ in _COMPRESSIONS)
    plain = not compressed and head.startswith(_PLAIN_TORCH_STARTS)
    if is_tar(path):
        return None if plain else 'tar'
    if is_compressed_pt(path):
        return None if plain else 'compressed'
    if plain:
        return None
    if _is_tar_content(path):
        return 'tar'
    return 'compressed' if compressed else None


def _shown(path: str, shown: Optional[str]) -> str:
    return shown or f"'{path}'"


def _size(size: float) -> str:
    return f'{size / 2**30:.1f} GiB' if size >= 2**30 else f'{size / 2**20:.1f} MiB'


def _member_problem(member: tarfile.TarInfo) -> Optional[str]:
    """Why ``member`` may not be unpacked, or ``None``."""
    name = member.name
    if name.startswith(('/', '\\')) or '..' in PurePosixPath(name.replace('\\', '/')).parts:
        return ('would be written outside the folder the archive is unpacked into (an absolute name or one with '
                "'..')")
    if member.issym() or member.islnk():
        return f"is a {'symbolic' if member.issym() else 'hard'} link (to '{member.linkname}')"
    if not (member.isreg() or member.isdir()):
        kind = ('a device' if member.ischr() or member.isblk() else 'a pipe' if member.isfifo()
                else f'of tar type {member.type!r}')
        return f'is {kind}, not a file or folder'
    return None


def _checked_members(tar: tarfile.TarFile, shown: str, folder: str) -> List[tarfile.TarInfo]:
    members, total = [], 0
    for member in tar:
        if len(members) == MAX_MEMBERS:
            raise ArchiveError(f'{shown} holds more than {MAX_MEMBERS} members, more than a checkpoint archive '
                               'holds; it was not unpacked')
        problem = _member_problem(member)
        if problem:
            raise ArchiveError(f"{shown}: member '{member.name}' {problem}; a checkpoint archive holds only files "
                               'and folders under its own folder, so it was not unpacked')
        members.append(member)
        total += member.size if member.isreg() else 0
        if total > MAX_BYTES:
            raise ArchiveError(f'{shown} would unpack to more than {_size(MAX_BYTES)} (at member '
                               f"'{member.name}'), more than a checkpoint archive holds; it was not unpacked")
    free = shutil.disk_usage(folder).free
    if total > free:
        raise ArchiveError(f'{shown} would unpack to {_size(total)}, and {folder} has {_size(free)} free; make room '
                           'there (or set TMPDIR to a folder with more), then rerun')
    return members


def _unpack_tar(path: str, folder: str, shown: str) -> str:
    """Every member of the tar archive ``path``, checked, into ``folder``; its :data:`STATES_FILENAME`."""
    try:
        with tarfile.open(path) as tar:
            members = _checked_members(tar, shown, folder)
            for member in members:
                parts = [part for part in PurePosixPath(member.name.replace('\\', '/')).parts if part != '.']
                target = os.path.join(folder, *parts)
                try:
                    if member.isdir():
                        os.makedirs(target, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    source = tar.extractfile(member)
                    with source, open(target, 'wb') as out:
                        shutil.copyfileobj(source, out, 2**20)
                except OSError as error:
                    reason = error.strerror or error
                    raise ArchiveError(f"{shown}: member '{member.name}' cannot be unpacked ({reason})") from None
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as error:
        raise ArchiveError(f'{shown} cannot be read as a tar archive ({error}); a .tar checkpoint is one Composer '
                           'wrote (a tar holding composer_states.pt)') from None
    states = os.path.join(folder, STATES_FILENAME)
    if not os.path.isfile(states):
        raise ArchiveError(f'{shown} holds no {STATES_FILENAME}, the file a Composer .tar checkpoint holds')
    return states


def _copy_bounded(source: IO[bytes], out: IO[bytes], shown: str) -> None:
    written = 0
    while chunk := source.read(2**20):
        written += len(chunk)
        if written > MAX_BYTES:
            raise ArchiveError(f'{shown} decompresses to more than {_size(MAX_BYTES)}, more than a checkpoint '
                               'holds; it was not decompressed')
        out.write(chunk)


def _cli_decompress(path: str, extension: str, out: IO[bytes], shown: str) -> None:
    """Decompress with the command-line tool Composer uses for ``extension`` (which writes to a pipe only)."""
    from composer.utils.compression import KNOWN_COMPRESSORS
    compressor = next((c for c in KNOWN_COMPRESSORS if c.extension == extension), None)
    if compressor is None or not compressor.exists:
        tool = compressor.cmd if compressor else extension
        raise ArchiveError(f'{shown} is compressed with {extension}, and the {tool} command that decompresses it is '
                           'not installed; install it, or decompress the file yourself and give the .pt file')
    process = subprocess.Popen([compressor.cmd, '-dc', os.path.abspath(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        _copy_bounded(process.stdout, out, shown)
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        code = process.wait()
    if code != 0:
        raise ArchiveError(f'{shown} cannot be decompressed with {compressor.cmd} (exit status {code})')


def _decompress(path: str, folder: str, shown: str) -> str:
    """The decompressed content of ``path`` as :data:`STATES_FILENAME` in ``folder``; never beside ``path``."""
    head = _head(path)
    found = next(((extension, opener) for magic, extension, opener in _COMPRESSIONS if head.startswith(magic)), None)
    if found is None and path.endswith('.lzma'):
        found = ('lzma', lzma.open)  # the legacy .lzma format has no magic number of its own
    if found is None:
        raise ArchiveError(f'{shown} cannot be decompressed: its content is none of the compressed formats '
                           f'(gz, bz2, xz, lzma, zst, lz4, lzo) its name ({os.path.basename(path)}) says')
    extension, opener = found
    states = os.path.join(folder, STATES_FILENAME)
    with open(states, 'xb') as out:
        if opener is None:
            _cli_decompress(path, extension, out, shown)
            return states
        try:
            with opener(path) as source:
                _copy_bounded(source, out, shown)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
            raise ArchiveError(f'{shown} cannot be decompressed as {extension} ({error})') from None
    return states


def unpack(path: str, folder: str, shown: Optional[str] = None) -> str:
    """The plain ``torch.save`` file that ``path`` is or holds: ``path`` itself, or its checkpoint unpacked into
    ``folder`` (which should be private and empty), every member checked first.

    Args:
        path: a checkpoint file, an archive or not.
        folder: where an archive is unpacked.
        shown: how an error names the file (a download's original address); ``'path'`` by default.

    Raises:
        ArchiveError: see the module's docstring.
    """
    path = os.fspath(path)
    kind = archive_kind(path)
    if kind == 'tar':
        return _unpack_tar(path, folder, _shown(path, shown))
    if kind == 'compressed':
        return _decompress(path, folder, _shown(path, shown))
    return path


@contextlib.contextmanager
def unpacked(path: str, shown: Optional[str] = None) -> Iterator[str]:
    """While active, the plain ``torch.save`` file that ``path`` is or holds (:func:`unpack`): an archive is
    unpacked into a private temporary folder (``tempfile.mkdtemp``), removed on exit. Tensors mapped from it
    (``mmap``) stay readable after that, as the system keeps a removed file's mapped content."""
    path = os.fspath(path)
    if archive_kind(path) is None:
        yield path
        return
    folder = tempfile.mkdtemp(prefix='checkpoint-')
    try:
        yield unpack(path, folder, shown)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _uri(path: str, object_store: object) -> str:
    get_uri = getattr(object_store, 'get_uri', None)
    try:
        return get_uri(path) if callable(get_uri) else path
    except Exception:  # noqa: BLE001 - the name is for a message only
        return path


@contextlib.contextmanager
def composer_unpacks_checked(sources: Optional[Dict[str, str]] = None) -> Iterator[None]:
    """While active, Composer's ``load_checkpoint`` (a Trainer's ``load_path`` or autoresume, a
    ``load_checkpoint`` callback at any event) unpacks an archive it fetched as :func:`unpack` does, into its own
    temporary folder, instead of with ``extractall`` or beside the original: an archive that breaks a rule raises
    :class:`ArchiveError` before anything of it is written. Other checkpoints load as Composer loads them.

    Args:
        sources: filled with each checkpoint file Composer then reads, and how to name it (``'s3://bucket/c.tar'``,
            what the user gave, rather than the temporary copy read).
    """
    download = composer_checkpoint.download_checkpoint
    sources = {} if sources is None else sources

    def download_checked(path: str, node_checkpoint_folder: str, object_store: object,
                         progress_bar: bool) -> Tuple[str, Optional[str], bool]:
        shown = f"'{_uri(path, object_store) if object_store is not None else path}'"
        if not (is_tar(path) or is_compressed_pt(path)):
            states, extracted, extracted_rank_n = download(path, node_checkpoint_folder, object_store, progress_bar)
            sources[str(states)] = shown
            return states, extracted, extracted_rank_n
        fetched = os.path.join(node_checkpoint_folder, 'rank0_checkpoint')
        folder = os.path.join(node_checkpoint_folder, 'checkpoint')
        try:
            if dist.get_local_rank() == 0:
                get_file(destination=fetched, path=path.format(rank=0, local_rank=0, node_rank=0),
                         object_store=object_store, progress_bar=progress_bar)
                os.makedirs(folder)
                states = unpack(fetched, folder, shown)
                if states == fetched:  # not an archive after all (a torch file named .tar): read as it is
                    states = os.path.join(folder, STATES_FILENAME)
                    if os.path.islink(fetched):  # Composer links a local file rather than copy it
                        os.symlink(os.path.realpath(fetched), states)
                    else:
                        os.replace(fetched, states)
        finally:  # as Composer's download_checkpoint: every local rank waits for local rank 0, then all ranks
            signal = os.path.join(node_checkpoint_folder, dist.get_node_signal_file_name())
            if dist.get_local_rank() == 0:
                with open(signal, 'wb') as file:
                    file.write(b'local_rank0_completed')
            with dist.local_rank_zero_download_and_wait(signal):
                dist.barrier()
            if dist.get_local_rank() == 0:
                os.remove(signal)
            dist.barrier()
        states = os.path.join(folder, STATES_FILENAME)
        sources[states] = shown
        return states, folder if is_tar(path) else None, False

    composer_checkpoint.download_checkpoint = download_checked
    try:
        yield
    finally:
        composer_checkpoint.download_checkpoint = download
