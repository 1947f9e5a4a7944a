"""Bad checkpoint archives (issue 21, topic 'archives'): ``.tar`` and ``.pt.gz`` files that would run code or write
outside the folder they are unpacked into, as rows of tests/bad_inputs.py's TABLE (exit status 2, one line,
nothing written: a member aimed at the test's folder would show there), and the helpers that write them, which
tests/test_archives.py shares."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from tests.bad_inputs import RUN, RUNS_CODE, BadInput, RunsCode, with_run, write_recipe

#: What the RecipeError says after the archive and the member, for one that would be written outside.
ESCAPES = (r" would be written outside the folder the archive is unpacked into \(an absolute name or one with "
           r"'\.\.'\); a checkpoint archive holds only files and folders under its own folder, so it was not "
           r'unpacked$')
#: A Composer checkpoint's states, as Composer's ``.tar`` holds them.
STATES = 'composer_states.pt'


Member = Tuple[tarfile.TarInfo, bytes]


def member(name: str, data: bytes = b'', kind: bytes = tarfile.REGTYPE, target: str = '') -> Member:
    """A tar member: a file of ``data``, or another ``kind`` (a link to ``target``, a device, a folder)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    return info, data


def write_tar(path: Path, *members: Member) -> Path:
    """A tar archive of ``members``, in that order (compressed as ``path``'s name says: .tar.gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, 'w:gz' if path.name.endswith('.gz') else 'w') as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def states_member(checkpoint: Path) -> Member:
    """``checkpoint``'s bytes as the archive's composer_states.pt."""
    return member(STATES, checkpoint.read_bytes())


def code_running(tmp: Path) -> Path:
    """A checkpoint (``tmp/src/composer_states.pt``) that creates ``tmp/code-ran`` when unpickled."""
    path = tmp / 'src' / STATES
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state': {'model': {}}, 'payload': RunsCode(tmp)}, path)
    return path


def gzipped(source: Path, path: Path) -> Path:
    """``gzip -c source > path``."""
    path.write_bytes(gzip.compress(source.read_bytes()))
    return path


def plain_checkpoint(path: Path) -> Path:
    """A file shaped like a Composer checkpoint of nothing (enough to be unpacked and refused, or not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state': {'model': {'w': torch.ones(2)}}}, path)
    return path


def escaping(tmp: Path, name: Optional[str] = None) -> Path:
    """A Composer-like .tar whose second member is named ``name`` (default: an absolute name in ``tmp``)."""
    name = name or str(tmp / 'escaped.pth')
    return write_tar(tmp / 'slip.tar', states_member(plain_checkpoint(tmp / 'src' / STATES)),
                     member(name, b'import os; os.system("touch code-ran")\n'))


def _load_path(command: str, archive: Callable[[Path], Path], **changes) -> Callable[[Path], List[str]]:
    def setup(tmp: Path) -> List[str]:
        return [command, write_recipe(tmp, with_run(load_path=str(archive(tmp)), **changes))]

    return setup


def _callback(archive: Callable[[Path], Path]) -> Callable[[Path], List[str]]:
    def setup(tmp: Path) -> List[str]:
        loading = {'load_checkpoint': {'load_path': str(archive(tmp)), 'event': 'fit_start'}}
        return ['train', write_recipe(tmp, with_run(callbacks=[loading]))]

    return setup


def _weights(command: str, archive: Callable[[Path], Path]) -> Callable[[Path], List[str]]:
    def setup(tmp: Path) -> List[str]:
        (tmp / 'photo.jpg').write_text('not read: the weights are refused first')
        if command == 'train':
            return ['train', write_recipe(tmp, RUN), f'model.efficientnet_b0.pretrained={archive(tmp)}']
        return [command, str(archive(tmp)), *([str(tmp / 'photo.jpg')] if command == 'predict' else
                                              ['--out', str(tmp / 'model.ts'), '--format', 'torchscript'])]

    return setup


def _code_tar(tmp: Path) -> Path:
    return write_tar(tmp / 'crafted.tar', states_member(code_running(tmp)))


def _code_gz(tmp: Path) -> Path:
    return gzipped(code_running(tmp), tmp / 'crafted.pt.gz')


def _link(kind: bytes) -> Callable[[Path], Path]:
    def archive(tmp: Path) -> Path:
        return write_tar(tmp / 'linked.tar', states_member(plain_checkpoint(tmp / 'src' / STATES)),
                         member('escape', kind=kind, target=str(tmp)))

    return archive


def _dotdot(tmp: Path) -> Path:
    return escaping(tmp, '../../escaped.pth')


def _without_states(tmp: Path) -> Path:
    return write_tar(tmp / 'other.tar', member('weights.pt', plain_checkpoint(tmp / 'src' / 'w.pt').read_bytes()))


ROWS: List[BadInput] = [
    BadInput('override', 'train load_path .tar with an absolute member', _load_path('train', escaping),
             r"load_path: '.*/slip.tar': member '/.*/escaped.pth'" + ESCAPES),
    BadInput('override', 'eval load_path .tar with a member in ..', _load_path('eval', _dotdot),
             r"load_path: '.*/slip.tar': member '\.\./\.\./escaped.pth'" + ESCAPES),
    BadInput('override', 'load_trusted load_path .tar with an absolute member',
             _load_path('eval', escaping, load_trusted=True),
             r"load_path: '.*/slip.tar': member '/.*/escaped.pth'" + ESCAPES),
    BadInput('override', 'load_path .tar with a symbolic link', _load_path('train', _link(tarfile.SYMTYPE)),
             r"load_path: '.*/linked.tar': member 'escape' is a symbolic link \(to '.*'\); a checkpoint archive "
             r'holds only files and folders under its own folder, so it was not unpacked$'),
    BadInput('override', 'load_path .tar with a hard link', _load_path('eval', _link(tarfile.LNKTYPE)),
             r"load_path: '.*/linked.tar': member 'escape' is a hard link \(to '.*'\)"),
    BadInput('override', 'load_path .tar with a device', _load_path('eval', _link(tarfile.CHRTYPE)),
             r"load_path: '.*/linked.tar': member 'escape' is a device, not a file or folder"),
    BadInput('override', 'load_path .tar without composer_states.pt', _load_path('eval', _without_states),
             r"load_path: '.*/other.tar' holds no composer_states.pt, the file a Composer .tar checkpoint holds$"),
    BadInput('override', 'train load_path .tar that would run code', _load_path('train', _code_tar),
             r"load_path: '.*/crafted.tar'" + RUNS_CODE),
    BadInput('override', 'eval load_path .pt.gz that would run code', _load_path('eval', _code_gz),
             r"load_path: '.*/crafted.pt.gz'" + RUNS_CODE),
    BadInput('recipe', 'load_checkpoint callback of a .tar that would run code', _callback(_code_tar),
             r"callbacks.load_checkpoint.load_path: '.*/crafted.tar'" + RUNS_CODE),
    BadInput('recipe', 'load_checkpoint callback of a .pt.gz that would run code', _callback(_code_gz),
             r"callbacks.load_checkpoint.load_path: '.*/crafted.pt.gz'" + RUNS_CODE),
    BadInput('recipe', 'load_checkpoint callback of a .tar with an absolute member', _callback(escaping),
             r"callbacks.load_checkpoint.load_path: '.*/slip.tar': member '/.*/escaped.pth'" + ESCAPES),
    BadInput('weights', 'pretrained .tar with an absolute member', _weights('train', escaping),
             r"model.efficientnet_b0: Pretrained weights file '.*/slip.tar': member '/.*/escaped.pth'" + ESCAPES),
    BadInput('cli', 'predict weights .tar with an absolute member', _weights('predict', escaping),
             r"predict: Pretrained weights file '.*/slip.tar': member '/.*/escaped.pth'" + ESCAPES, usage=False),
    BadInput('cli', 'export weights .tar with a member in ..', _weights('export', _dotdot),
             r"export: Pretrained weights file '.*/slip.tar': member '\.\./\.\./escaped.pth'" + ESCAPES,
             usage=False),
]
