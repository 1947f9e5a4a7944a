"""The StreamingDataset subclass behind ``streaming_imagenet``, for MDS shards however they were written.

Kept apart from :mod:`composer_efficientnet.data.streaming`, which imports this module only when streaming
data is used: ``mosaicml-streaming`` is an optional extra, and spawned DataLoader workers must be able to
import the class by name to unpickle the dataset.

The image column may be encoded as ``bytes`` (our converter), ``jpeg`` or ``png`` (Streaming's converters,
most ``MDSWriter`` scripts), ``pil`` (raw pixels and a PIL mode) or ``ndarray`` (uint8 pixels, height x width
x channels). Streaming would decode ``jpeg``/``png``/``pil`` to PIL images; instead every column but the label
is read as raw bytes (each shard reader's encoding for it is set to ``bytes`` once the readers are built) and
the image is decoded once, by the same :func:`decode_image_bytes` the ImageFolder path uses, so identical
source bytes give identical pixels. Extra columns are never decoded.

Shards may come from others, so nothing they hold may reach outside their place: every file name each split's
``index.json`` gives Streaming (the shard files it reads, decompresses, evicts or deletes) is checked by
:func:`check_index` before Streaming uses it (:class:`CheckedStream`), labels outside the model's classes stop the
run with one line naming the sample, and a sample that cannot be read out of a damaged shard is a bad sample.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from streaming import Stream, StreamingDataset
from streaming.base.format import MDSReader, get_index_basename
from streaming.base.format.mds.encodings import mds_decode

from composer_efficientnet.data.bad_samples import BadSampleTracker, load_or_replace
from composer_efficientnet.data.errors import DamagedShardError, DatasetLayoutError, LabelOutOfRangeError
from composer_efficientnet.data.transforms import StageSettings, decode_image_bytes, start_batch

__all__ = ['StreamingImageDataset', 'CheckedStream', 'ENCODED_IMAGE_ENCODINGS', 'LABEL_ENCODINGS',
           'check_index', 'decode_image_column']

#: Image column encodings whose raw bytes are an encoded file (JPEG, PNG, WebP, GIF) for the decoder.
ENCODED_IMAGE_ENCODINGS = ('bytes', 'jpeg', 'png')

#: Label column encodings: Streaming decodes them to Python ints.
LABEL_ENCODINGS = ('int', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64', 'str_int')

_PIXEL_ENCODINGS = ('pil', 'ndarray')  # raw pixels; ndarray may carry ':dtype[:shape]'


def _base(encoding: str) -> str:
    return encoding.split(':', 1)[0]


def _pixels_to_chw(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels (height x width, or height x width x 1, 3 or 4 channels) as a uint8 RGB CHW tensor.

    Grayscale is repeated to three channels and alpha dropped, as the decoder's RGB mode does. The result is a
    channels-last view of one copy of the pixels, the layout the resize kernels want.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in
                                                                 (1, 3, 4)):
        raise ValueError(f'pixels of dtype {pixels.dtype} and shape {tuple(pixels.shape)}; expected uint8, '
                         'height x width x 1, 3 or 4 channels')
    image = torch.from_numpy(pixels.copy()).view(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1)
    if image.shape[0] == 1:
        return image.expand(3, -1, -1).contiguous()
    return image[:3]


def _decode_pil(data: bytes) -> torch.Tensor:
    """Streaming's ``pil`` layout: width, height and mode length (uint32 each), the mode, then raw pixels."""
    width, height, mode_size = (int(v) for v in np.frombuffer(data[:12], np.uint32))
    mode = data[12:12 + mode_size].decode('utf-8')
    raw = data[12 + mode_size:]
    if mode in ('RGB', 'L'):
        return _pixels_to_chw(np.frombuffer(raw, np.uint8).reshape(height, width, -1))
    return _pixels_to_chw(np.asarray(Image.frombytes(mode, (width, height), raw).convert('RGB')))


def decode_image_column(encoding: str, data: bytes) -> torch.Tensor:
    """The raw bytes of one sample's image column, written with MDS ``encoding``, as a uint8 RGB CHW tensor.

    Args:
        encoding: The column's encoding in the shard index, e.g. ``jpeg`` or ``ndarray:uint8``.
        data: The column's bytes as stored in the shard.

    Raises RuntimeError or ValueError for data that cannot be decoded (handled as a bad sample).
    """
    base = _base(encoding)
    if base in ENCODED_IMAGE_ENCODINGS:
        return decode_image_bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    try:
        if base == 'pil':
            return _decode_pil(data)
        if base == 'ndarray':
            return _pixels_to_chw(mds_decode(encoding, data))
    except (KeyError, IndexError) as error:  # a damaged header: an unknown dtype code, too few bytes
        raise ValueError(f'{encoding} data with a damaged header ({error!r})') from error
    raise ValueError(f"image column encoding '{encoding}' is not readable")


#: The keys of an index's shard entry that name a file of the shard (MDS shards have the first two).
SHARD_FILE_KEYS = ('raw_data', 'zip_data', 'raw_meta', 'zip_meta')

#: What a shard file name in an index must be, for messages.
_ALLOWED_NAME = ("a file name relative to the split directory and inside it, such as 'shard.00000.mds' (not empty, "
                 "no absolute path, no '..')")

#: What reading one sample out of a damaged shard raises in Streaming's reader and decoders (a truncated file: an
#: IndexError for a sample past its end, a ValueError or IndexError for a column cut short; random bytes: any).
_SHARD_READ_ERRORS = (IndexError, KeyError, ValueError, OverflowError, TypeError)


def _name_problem(split_dir: str, name: Any) -> Optional[str]:
    """Why ``name``, a shard file name from the index of the split in ``split_dir``, could reach outside it."""
    if not isinstance(name, str):
        return 'not a file name'
    if not name:
        return 'empty'
    if '\0' in name:
        return 'a name with a NUL character'
    if os.path.isabs(name):
        return 'an absolute path'
    parts = name.replace('\\', '/').split('/')
    if '..' in parts:
        return "a path that climbs out with '..'"
    if parts[-1] in ('', '.'):
        return 'a directory, not a file'
    # A folder in the path that is a symbolic link out of the split: Streaming would write and delete there.
    # (A shard file that is itself a link is safe: Streaming replaces or removes the link, never its target.)
    real_split = os.path.realpath(split_dir)
    folder = os.path.realpath(os.path.dirname(os.path.join(split_dir, name)))
    if os.path.commonpath([real_split, folder]) != real_split:
        return 'a path that leads out of the split directory through a symbolic link'
    return None


def check_index(filename: str, shown: Optional[str] = None) -> None:
    """Raise a one-line :class:`DatasetLayoutError` naming the index file and the shard entry unless every file the
    MDS index at ``filename`` names for its shards stays inside the split directory (the index's folder).

    Streaming joins each shard's ``raw_data``/``zip_data`` ``basename`` to the split's local directory and
    downloads, decompresses, evicts and deletes files there, so an absolute or ``..`` name would write or delete
    files anywhere. ``shown`` names the index in the message (its remote location, for a downloaded index).
    """
    shown = shown or filename
    try:
        with open(filename, 'rb') as file:
            index = json.load(file)
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f'{shown}: cannot read this MDS index ({error}); expected the index.json '
                                 'streaming.MDSWriter writes.') from None
    shards = index.get('shards') if isinstance(index, dict) else None
    if not isinstance(shards, list):
        raise DatasetLayoutError(f"{shown}: not an MDS index (no list of 'shards'); expected the index.json "
                                 'streaming.MDSWriter writes.')
    split_dir = os.path.dirname(os.path.abspath(filename))
    for number, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get('raw_data'), dict):
            raise DatasetLayoutError(f'{shown}: shard {number} is not an MDS shard entry (a mapping with raw_data); '
                                     'expected the index.json streaming.MDSWriter writes.')
        if shard.get('format') != 'mds':
            raise DatasetLayoutError(f"{shown}: shard {number} is in {shard.get('format')!r} format; expected MDS "
                                     'shards (written by streaming.MDSWriter).')
        for key in SHARD_FILE_KEYS:
            info = shard.get(key)
            if info is None and key != 'raw_data':
                continue
            name = info.get('basename') if isinstance(info, dict) else info
            problem = _name_problem(split_dir, name)
            if problem:
                raise DatasetLayoutError(f'{shown}: shard {number} names its {key} file {name!r}, {problem}; '
                                         f'expected {_ALLOWED_NAME}.')


class CheckedStream(Stream):
    """A Streaming ``Stream`` whose index is checked (:func:`check_index`) before any shard file is touched: a
    local or cached index before Streaming reads it, a remote one as soon as it is downloaded, before it is put in
    place and before any shard is fetched."""

    def _index_path(self) -> str:
        return os.path.join(self.local, self.split, get_index_basename())

    def _download_file(self, from_basename: str, to_basename: Optional[str] = None) -> str:
        local = super()._download_file(from_basename, to_basename)
        if from_basename == get_index_basename():
            try:
                check_index(local, shown=os.path.join(self.remote or '', self.split, from_basename))
            except DatasetLayoutError:
                os.remove(local)  # our own download into the cache; never put in place
                raise
        return local

    def get_shards(self, world: Any, allow_unsafe_types: bool) -> Any:
        index = self._index_path()
        checked = os.path.exists(index)
        if checked:
            check_index(index)
        shards = super().get_shards(world, allow_unsafe_types)
        if not checked:  # downloaded here (and checked then) or by the node's first process while this one waited
            check_index(index)
        return shards


def _described(encodings: Dict[str, str]) -> str:
    return ', '.join(f'{name} ({encoding})' for name, encoding in encodings.items())


def _column_layout(shards: Sequence[Any], where: str) -> Dict[str, str]:
    """Column name -> encoding of a split's shards, which must all be MDS shards with the same columns."""
    layouts = []
    for shard in shards:
        if not isinstance(shard, MDSReader):
            raise DatasetLayoutError(f'{where}: shards in {type(shard).__name__} format; expected MDS shards '
                                     '(written by streaming.MDSWriter).')
        layouts.append(dict(zip(shard.column_names, shard.column_encodings)))
    for layout in layouts:
        if layout != layouts[0]:
            raise DatasetLayoutError(f'{where}: shards with different columns ({_described(layouts[0])} and '
                                     f'{_described(layout)}); expected one column layout for the whole split.')
    return layouts[0]


def _check_columns(encodings: Dict[str, str], image_key: str, label_key: str, allow_unsafe_types: bool,
                   where: str) -> None:
    """Raise a one-line DatasetLayoutError naming ``where`` unless the columns hold a readable image and an
    integer label, and pickled columns are declared trusted."""
    for key, name in (('image_key', image_key), ('label_key', label_key)):
        if name not in encodings:
            raise DatasetLayoutError(f"{where}: no column '{name}' ({key}); the shards have columns "
                                     f'{_described(encodings)}. Set image_key and label_key to the columns that '
                                     'hold the image and the class index.')
    for key, name in (('image_key', image_key), ('label_key', label_key)):
        if encodings[name] == 'pkl':
            raise DatasetLayoutError(f"{where}: column '{name}' ({key}) is pickled (pkl), which is not supported: "
                                     'unpickling runs whatever the data says. Rewrite it with an image encoding '
                                     '(bytes, jpeg, png, pil, ndarray) or an integer label encoding (int).')
    image_encoding = encodings[image_key]
    base, _, dtype = image_encoding.partition(':')
    if base not in ENCODED_IMAGE_ENCODINGS + _PIXEL_ENCODINGS or (base == 'ndarray' and dtype and
                                                                 not dtype.startswith('uint8')):
        raise DatasetLayoutError(f"{where}: image column '{image_key}' is encoded as '{image_encoding}'; expected "
                                 'one image per sample as bytes, jpeg, png, pil or ndarray (uint8, height x width '
                                 'x channels).')
    if encodings[label_key] not in LABEL_ENCODINGS:
        raise DatasetLayoutError(f"{where}: label column '{label_key}' is encoded as '{encodings[label_key]}'; "
                                 f'expected a class index in one of {", ".join(LABEL_ENCODINGS)}.')
    pickled = [name for name, encoding in encodings.items() if encoding == 'pkl']
    if pickled and not allow_unsafe_types:
        raise DatasetLayoutError(f'{where}: column(s) {", ".join(pickled)} are pickled (pkl), and Streaming opens '
                                 'shards with pickled columns only from trusted data; if you trust these shards, '
                                 'set allow_unsafe_types: true (the columns are ignored, never unpickled).')


class StreamingImageDataset(StreamingDataset):
    """MDS shards with an image column (``image_key``) and a class-index column (``label_key``) as
    ``(uint8 CHW image, int label)`` samples, with the same bad-sample handling as the ImageFolder path.

    Args:
        transform: The host transform applied to each decoded image.
        strict: Raise on the first unreadable image (or damaged shard sample) instead of replacing and counting it.
        image_key: The column holding the image.
        label_key: The column holding the class index.
        allow_unsafe_types: Accept shards with pickled (``pkl``) extra columns; they are never unpickled.
        num_classes: The model's number of classes: a label outside ``[0, num_classes)`` (outside ``[0, inf)``
            when ``None``) stops the run with a :class:`LabelOutOfRangeError` naming the sample.
        remote, local, split: Where the shards are, as for ``streaming.StreamingDataset`` (one
            :class:`CheckedStream`).
        kwargs: ``streaming.StreamingDataset``'s other arguments.
    """

    def __init__(self, *, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, strict: bool = False,
                 image_key: str = 'x', label_key: str = 'y', allow_unsafe_types: bool = False,
                 num_classes: Optional[int] = None, remote: Optional[str] = None, local: Optional[str] = None,
                 split: Optional[str] = None, **kwargs: Any) -> None:
        # Streaming's own pickle check would refuse with its keyword's name; _check_columns refuses, naming
        # the recipe's, before any sample is read (opening the index unpickles nothing).
        super().__init__(streams=[CheckedStream(remote=remote, local=local, split=split)], allow_unsafe_types=True,
                         **kwargs)
        stream = self.streams[0]
        self.where = f"{(stream.remote or stream.local).rstrip('/')}/{stream.split or ''}".rstrip('/')
        columns = _column_layout(self.shards, self.where)
        _check_columns(columns, image_key, label_key, allow_unsafe_types, self.where)
        self.image_encoding = columns[image_key]
        for shard in self.shards:
            shard.column_encodings = [encoding if name == label_key else 'bytes'
                                      for name, encoding in zip(shard.column_names, shard.column_encodings)]
        self.image_key, self.label_key = image_key, label_key
        self.has_path = 'path' in columns
        self.transform = transform
        self.strict = strict
        self.num_classes = num_classes
        self.bad_samples = BadSampleTracker()
        self.stage: Optional[StageSettings] = getattr(transform, 'stage', None)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, int]]:
        """This worker's samples; each run of ``batch_size`` of them (one DataLoader batch) is transformed at the
        progressive-learning stage's settings of its first sample (see ``StageSettings``)."""
        samples = super().__iter__()
        for position in itertools.count():
            if position % (self.batch_size or 1) == 0:
                start_batch(self.transform)
            sample = next(samples, None)
            if sample is None:
                return
            yield sample

    def _shard_of(self, index: int) -> Tuple[str, int]:
        """The file name of the shard holding sample ``index``, and the sample's position in it."""
        shard_id, position = self.spanner[index]
        return self.shards[shard_id].raw_data.basename, int(position)

    def _load(self, index: int) -> Tuple[torch.Tensor, int]:
        try:
            sample = super().get_item(index)
            label = int(sample[self.label_key])
        except _SHARD_READ_ERRORS as error:  # Streaming's reader on a truncated or overwritten shard
            shard, position = self._shard_of(index)
            raise DamagedShardError(f'{shard} is truncated or damaged at its sample {position}: '
                                    f'{type(error).__name__}: {error}') from error
        image = decode_image_column(self.image_encoding, sample[self.image_key])
        if label < 0 or (self.num_classes is not None and label >= self.num_classes):
            shard, position = self._shard_of(index)
            allowed = (f'[0, {self.num_classes}), the classes of the model (num_classes: {self.num_classes})'
                       if self.num_classes is not None else '[0, inf): class indices are never negative')
            raise LabelOutOfRangeError(f"{self.describe(index)}, sample {position} of {shard}: label {label} (column "
                                       f"'{self.label_key}') is outside {allowed}; fix the shards' labels, or give "
                                       'the model a num_classes above every label.')
        return image, label

    def describe(self, index: int) -> str:
        """The sample's source path if the shards record one (our converter's ``path`` column), and its index."""
        where = f'sample {index} of {self.where}'
        if not self.has_path:
            return where
        try:
            return f"{super().get_item(index)['path'].decode('utf-8', 'replace')} ({where})"
        except Exception:  # noqa: BLE001  (only a description for a message; never hide the real error)
            return where

    def get_item(self, sample_id: int, retry: int = 7) -> Tuple[torch.Tensor, int]:
        image, label = load_or_replace(sample_id, self.num_samples, self._load, self.describe, self.bad_samples,
                                       self.strict)
        return (self.transform(image) if self.transform is not None else image), label
