"""Images and class names from others (issue 21): the pixel limit read from an image's header before anything is
decoded (in the main process and in spawned DataLoader workers), class names printed escaped and refused when
malformed, and symlink loops, dangling symlinks and FIFOs in a class folder named for what they are. The bad
inputs' one-line errors are rows of tests/bad_inputs_images.py."""

from __future__ import annotations

import io
import json
import os
import pickle
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from composer_efficientnet import cli
from composer_efficientnet.arguments import predict_parser
from composer_efficientnet.callbacks.class_names import ClassNames, ClassNamesError, class_names_in
from composer_efficientnet.data import CorruptImageError, DatasetLayoutError, build_imagenet_dataspec
from composer_efficientnet.data import transforms
from composer_efficientnet.data.imagefolder import ImageFolderDataset, scan_split
from composer_efficientnet.data.transforms import (MAX_IMAGE_PIXELS, ImageSize, ImageTooLargeError, decode_image_bytes,
                                                    encoded_image_size)
from composer_efficientnet.predict import printable, read_images
from composer_efficientnet.weights import WeightsError
from tests import bad_inputs  # noqa: F401 - first: it imports the rows' module below at its end
from tests.bad_inputs_images import huge_png, named_checkpoint, write_huge_png
from tests.data_trees import make_tree, write_jpeg


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@pytest.fixture
def never_decode(monkeypatch):
    """Make torchvision's decoder fail the test if anything reaches it; the calls it got, if any."""
    calls = []

    def refuse(data, mode):
        calls.append(data.numel())
        raise AssertionError('the decoder was called')

    monkeypatch.setattr(transforms, 'decode_image', refuse)
    return calls


# -- the pixel limit ---------------------------------------------------------------------------------------------

def test_the_default_limit_is_pillows():
    assert MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3) == 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS
    assert predict_parser().parse_args(['w.pt', 'a.jpg']).max_image_pixels == MAX_IMAGE_PIXELS


def test_the_huge_png_is_cheap_to_write_and_valid(monkeypatch):
    start = time.perf_counter()
    png = huge_png()
    assert time.perf_counter() - start < 0.5 and len(png) < 100_000
    # Valid: its one IDAT inflates to exactly 20000 rows of filter byte 0 and 2500 bytes of pixels (in pieces).
    assert png[37:41] == b'IDAT' and png[-12:] == b'\0\0\0\0IEND\xaeB`\x82'
    inflate, left, total = zlib.decompressobj(), png[41:-16], 0
    while not inflate.eof:
        piece = inflate.decompress(left, 1 << 22)
        assert piece and not piece.strip(b'\0')
        total, left = total + len(piece), inflate.unconsumed_tail
    assert total == 20000 * 2501 and not left and not inflate.unused_data
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', None)  # Pillow refuses it too (over twice its limit)
    with Image.open(io.BytesIO(png)) as image:  # Pillow reads its header only, as ours does
        assert image.size == (20000, 20000) and image.mode == '1'


def test_decode_is_refused_from_the_header(never_decode):
    with pytest.raises(ImageTooLargeError, match=r'^20000 x 20000 pixels \(400,000,000\) is more than the limit of '
                                                 r'89,478,485 pixels$') as raised:
        decode_image_bytes(_tensor(huge_png()))
    assert raised.value.size == ImageSize(20000, 20000, 1, 400_000_000) and raised.value.limit == MAX_IMAGE_PIXELS
    assert never_decode == []
    with pytest.raises(AssertionError, match='the decoder was called'):  # without a limit it would decode
        decode_image_bytes(_tensor(huge_png()), max_pixels=None)


def _encoded(fmt: str, mode: str, size, **options) -> bytes:
    rng = np.random.default_rng(size[0])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize('fmt, mode, options', [
    ('JPEG', 'RGB', {}), ('JPEG', 'L', {}), ('JPEG', 'CMYK', {}), ('JPEG', 'RGB', {'progressive': True}),
    ('JPEG', 'RGB', {'exif': b'Exif\0\0' + bytes(200), 'icc_profile': bytes(70_000)}),  # segments before SOF
    ('PNG', 'RGB', {}), ('PNG', 'P', {}), ('PNG', '1', {}), ('PNG', 'RGBA', {'interlace': 1}), ('PNG', 'I;16', {}),
    ('GIF', 'P', {}), ('WEBP', 'RGB', {}), ('WEBP', 'RGB', {'lossless': True}), ('WEBP', 'RGBA', {}),
], ids=lambda value: value if isinstance(value, str) else ','.join(value) or '-')
def test_the_header_gives_the_size_the_decoder_gives(fmt, mode, options):
    data = _tensor(_encoded(fmt, mode, (131, 77), **options))
    size = encoded_image_size(data)
    assert size == ImageSize(131, 77, 1, 131 * 77)
    assert tuple(decode_image_bytes(data, max_pixels=131 * 77).shape) == (3, 77, 131)
    with pytest.raises(ImageTooLargeError):
        decode_image_bytes(data, max_pixels=131 * 77 - 1)


def test_every_frame_of_a_gif_counts(never_decode):
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)) for _ in range(4)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format='GIF', save_all=True, append_images=frames[1:], duration=40)
    data = _tensor(buffer.getvalue())
    assert encoded_image_size(data) == ImageSize(70, 50, 4, 14_000)
    with pytest.raises(ImageTooLargeError, match=r'^4 frames of 70 x 50 pixels \(14,000 in all\) is more than the '
                                                 r'limit of 13,999 pixels$'):
        decode_image_bytes(data, max_pixels=13_999)  # giflib would decode all four frames


def test_other_bytes_go_to_the_decoder_and_a_damaged_header_is_refused():
    with pytest.raises(RuntimeError, match='Unsupported image file'):
        decode_image_bytes(_tensor(b'not an image at all'))
    png = bytearray(huge_png(64, 100))
    png[12:16] = b'IHDX'
    with pytest.raises(ValueError, match='^damaged PNG header: it gives no image size$'):
        decode_image_bytes(_tensor(bytes(png)))
    with pytest.raises(ValueError, match='^damaged JPEG header'):
        decode_image_bytes(_tensor(b'\xff\xd8\xff\xe0\x00\x10JFIF'))


@pytest.mark.parametrize('limit', [0, -5, True, 1.5, '100'])
def test_the_limit_must_be_a_positive_number_of_pixels(tmp_path, limit):
    root = make_tree(tmp_path / 'imagenet', per_class=1)
    with pytest.raises(ValueError, match=r'max_image_pixels: must be a positive number of pixels, or null for no '
                                         r'limit \(default 89,478,485, Pillow'):
        ImageFolderDataset(str(root / 'train'), max_image_pixels=limit)
    with pytest.raises(ValueError, match=r'max_image_pixels: must be a positive'):
        build_imagenet_dataspec(str(root), crop_size=16, batch_size=1, max_image_pixels=limit)


def test_an_image_over_the_limit_is_a_bad_sample_counted_and_skipped(tmp_path, monkeypatch):
    root = make_tree(tmp_path / 'imagenet', per_class=1)
    big = write_huge_png(root / 'train' / 'dog' / 'big.png')
    dataset = ImageFolderDataset(str(root / 'train'))
    index = [dataset.path(i) for i in range(len(dataset))].index(str(big))
    decoded = []
    monkeypatch.setattr(transforms, 'decode_image', _counting(transforms.decode_image, decoded))
    image, label = dataset[index]  # replaced by the next readable sample, eel/0.jpg
    assert (label, image.shape) == (2, dataset[index + 1][0].shape)
    assert dataset.bad_samples.snapshot() == (1, [f'{big} (20000 x 20000 pixels: too large)'])
    assert len(decoded) == 2 and max(decoded) < 10_000  # eel/0.jpg twice; big.png never reached the decoder
    strict = ImageFolderDataset(str(root / 'train'), strict=True)
    with pytest.raises(CorruptImageError, match=rf"^{big}: 20000 x 20000 pixels \(400,000,000\) is more than the "
                                                r'limit of 89,478,485 pixels, which guards memory \(the image would be '
                                                r"decoded whole\); resize the image, raise the dataset's "
                                                r'max_image_pixels \(null: no limit\), or set strict: false'):
        strict[index]


def _counting(decode, calls):
    def counted(data, mode):
        calls.append(data.numel())
        return decode(data, mode=mode)

    return counted


def test_the_limit_goes_with_the_dataset_into_spawned_workers(tmp_path):
    """A spawned worker imports the package afresh: a limit set as a global in this process would not be there.
    The dataset's own limit is: of the tree's 32 x 32, 32 x 38 and 32 x 44 JPEGs, a limit of 1,300 pixels refuses
    the last (which the default would read), and it refuses the huge PNG, all without decoding them."""
    root = make_tree(tmp_path / 'imagenet', per_class=1, splits=('train',))
    big = write_huge_png(root / 'train' / 'cat' / 'big.png')
    dataset = ImageFolderDataset(str(root / 'train'), max_image_pixels=1300)
    assert pickle.loads(pickle.dumps(dataset)).max_image_pixels == 1300
    batches = list(DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context='spawn',
                              collate_fn=_labels))
    assert batches == [[0, 1, 1, 0]]  # cat/0.jpg, cat/big.png -> dog/0.jpg, dog/0.jpg, eel/0.jpg -> cat/0.jpg
    assert dataset.bad_samples.snapshot() == (2, [f'{big} (20000 x 20000 pixels: too large)',
                                                  f"{root / 'train' / 'eel' / '0.jpg'} (32 x 44 pixels: too large)"])
    strict = ImageFolderDataset(str(root / 'train'), strict=True, max_image_pixels=1300)
    with pytest.raises(CorruptImageError, match=r'eel/0.jpg: 32 x 44 pixels \(1,408\) is more than the limit of '
                                                r'1,300 pixels'):
        strict[3]  # in this process: the message strict gives, which crosses worker processes as any does


def _labels(samples):
    return [label for _, label in samples]


def test_the_recipe_parameter_reaches_the_dataset(tmp_path):
    root = make_tree(tmp_path / 'imagenet', per_class=1)
    spec = build_imagenet_dataspec(str(root), crop_size=16, batch_size=1, max_image_pixels=None)
    assert spec.dataloader.dataset.max_image_pixels is None
    assert build_imagenet_dataspec(str(root), crop_size=16, batch_size=1).dataloader.dataset.max_image_pixels == (
        MAX_IMAGE_PIXELS)


def test_streaming_and_predict_refuse_it_undecoded(tmp_path, never_decode):
    from composer_efficientnet.data._streaming_dataset import decode_image_column
    with pytest.raises(ImageTooLargeError):
        decode_image_column('png', huge_png())
    transform = {'crop_size': 16, 'resize_size': 18, 'interpolation': 'bilinear'}
    big = str(write_huge_png(tmp_path / 'big.png'))
    with pytest.raises(CorruptImageError, match=r"'.*big.png': 20000 x 20000 pixels \(400,000,000\) is more than the "
                                                r'limit of 89,478,485 pixels; resize it, or raise --max-image-pixels'):
        read_images([big], transform)
    assert never_decode == []


# -- class names from a checkpoint ------------------------------------------------------------------------------

def test_printable_escapes_control_characters_and_keeps_letters():
    assert printable('café 猫 Ωmega 😀 — ok') == 'café 猫 Ωmega 😀 — ok'
    assert printable('\x1b[31mred\x1b[0m') == '\\x1b[31mred\\x1b[0m'
    assert printable('two\nlines\r\t') == 'two\\nlines\\r\\t'
    assert printable('\u202egnp.exe') == '\\u202egnp.exe'  # a right-to-left override would reverse the line
    assert printable('back\\slash') == 'back\\\\slash'  # so that an escape in the output is never ambiguous


def _checkpoint(classes):
    return {'state': {'callbacks': {'ClassNames': {'classes': classes}}}}


def test_class_names_in_reads_lists_of_strings_and_refuses_the_rest():
    assert class_names_in(_checkpoint(['cat', 'dog'])) == ['cat', 'dog']
    assert class_names_in(_checkpoint(('cat', 'dog'))) == ['cat', 'dog']
    assert class_names_in(_checkpoint(None)) is None  # data without names
    assert class_names_in({'state': {'callbacks': {}}}) is None and class_names_in({}) is None
    assert class_names_in(_checkpoint(ClassNames(['a', 'b']).state_dict()['classes'])) == ['a', 'b']
    for classes, wrong in (({'0': 'cat'}, r'are a dict \(\{'), ([3, 'dog'], r'hold 1 entry that is not a string '
                                                                             r'\(the first, index 0: an int, 3\)'),
                           ('cat', r"are a str \('cat'\)"), (7, r'are an int \(7\)')):
        with pytest.raises(ClassNamesError, match=rf"^'run.pt': the class names \(state.callbacks.ClassNames"
                                                  rf'.classes\) {wrong}'):
            class_names_in(_checkpoint(classes), where="'run.pt'")
    with pytest.raises(WeightsError, match=r"record \(state.callbacks.ClassNames\) is a list \(\['cat'\]\), not a "
                                           r"mapping with 'classes'"):
        class_names_in({'state': {'callbacks': {'ClassNames': ['cat']}}})
    with pytest.raises(ClassNamesError, match=r"are a str \('x{50,}\.\.\.\);"):  # a long value is shortened
        class_names_in(_checkpoint('x' * 80))


def test_predict_prints_class_names_and_paths_escaped_and_writes_them_exactly(tmp_path, capsys):
    names = ['\x1b[2J\x1b[Hcleared', 'two\nlines', 'café 猫']
    checkpoint = named_checkpoint(tmp_path / 'run.pt', names)
    image = write_jpeg(tmp_path / 'odd\nname\x1b[1m.jpg', seed=2)
    out = tmp_path / 'p.json'
    assert cli.main(['predict', str(checkpoint), str(image), '--top', '3', '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '\x1b' not in printed and len(printed.splitlines()) == 4  # the image and its three classes
    first = printed.splitlines()[0]
    assert first == printable(str(image)) and first.endswith('odd\\nname\\x1b[1m.jpg')
    assert {line.split('  ')[-1] for line in printed.splitlines()[1:]} == {
        '\\x1b[2J\\x1b[Hcleared', 'two\\nlines', 'café 猫'}
    predictions = json.loads(out.read_text())['predictions']
    assert predictions[0]['image'] == str(image)
    assert {entry['class'] for entry in predictions[0]['top']} == set(names)


# -- symlinks and special files in a class folder ---------------------------------------------------------------

def _old_walk(class_dir):
    """The walk scan_split made before: os.walk following links, hidden entries left out, sorted."""
    split_dir = os.path.dirname(class_dir)
    paths = []
    for folder, dirs, names in os.walk(class_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        paths += [os.path.relpath(os.path.join(folder, n), split_dir) for n in sorted(names) if not n.startswith('.')]
    return paths


def test_the_walk_lists_what_os_walk_did_in_the_same_order(tmp_path):
    root = make_tree(tmp_path / 'imagenet', per_class=2)
    dog = root / 'train' / 'dog'
    for sub in ('b/deep', 'a', '.hidden'):
        write_jpeg(dog / sub / 'x.jpg', seed=5)
    write_jpeg(dog / 'Z.JPG', seed=6)
    write_jpeg(tmp_path / 'elsewhere' / 'linked.jpg', seed=7)
    os.symlink(tmp_path / 'elsewhere', dog / 'c')  # a folder linked in from outside: followed, as before
    os.symlink(tmp_path / 'elsewhere' / 'linked.jpg', dog / 'direct.jpg')
    classes, paths, labels = scan_split(str(root / 'train'))
    expected = sum((_old_walk(str(root / 'train' / name)) for name in classes), [])
    assert paths == expected and 'dog/c/linked.jpg' in paths and 'dog/b/deep/x.jpg' in paths
    assert not any('.hidden' in path for path in paths)


def test_a_symlink_loop_is_named_not_walked_40_levels_deep(tmp_path):
    root = make_tree(tmp_path / 'imagenet', per_class=1)
    nested = root / 'train' / 'eel' / 'a' / 'b'
    nested.mkdir(parents=True)
    os.symlink('../..', nested / 'again')
    assert len(_old_walk(str(root / 'train' / 'eel'))) > 30  # os.walk went round until the kernel said ELOOP
    with pytest.raises(DatasetLayoutError, match=r"train: 1 symlink loop\(s\) \(eel/a/b/again -> '\.\./\.\.' \(back "
                                                 r'to eel\)\); each leads back to itself or to a folder it is in'):
        scan_split(str(root / 'train'))


@pytest.mark.parametrize('make, message', [
    (lambda eel: os.symlink('self', eel / 'self'), r"1 symlink loop\(s\) \(eel/self -> 'self'\)"),
    (lambda eel: (os.symlink('b.jpg', eel / 'a.jpg'), os.symlink('a.jpg', eel / 'b.jpg')),
     r"2 symlink loop\(s\) \(eel/a.jpg -> 'b.jpg'; eel/b.jpg -> 'a.jpg'\)"),
    (lambda eel: os.symlink('missing.jpg', eel / 'gone.jpg'),
     r"1 dangling symlink\(s\) \(eel/gone.jpg -> 'missing.jpg'\); their targets do not exist"),
    (lambda eel: os.symlink(eel / 'missing', eel / 'gone'), r"1 dangling symlink\(s\) \(eel/gone -> '/"),
    (lambda eel: os.symlink('.', eel.parent / 'fox'), r"symlink loop\(s\) \(fox -> '\.' \(back to the split "
                                                      r'directory\)\); a class folder that is a link to its split'),
    (lambda eel: os.mkfifo(eel / 'pipe.jpg'), r'1 file\(s\) that are not regular files \(eel/pipe.jpg: a FIFO\)'),
], ids=['self', 'mutual', 'dangling file', 'dangling folder', 'class folder', 'fifo'])
def test_symlinks_that_lead_nowhere_and_special_files_are_named(tmp_path, make, message):
    root = make_tree(tmp_path / 'imagenet', per_class=1, splits=('train',))
    make(root / 'train' / 'eel')
    with pytest.raises(DatasetLayoutError, match=message):
        scan_split(str(root / 'train'))


def test_a_dangling_split_symlink_is_named(tmp_path):
    root = make_tree(tmp_path / 'imagenet', per_class=1, splits=('train',))
    os.symlink('gone', root / 'val')
    with pytest.raises(FileNotFoundError, match=r"val: split directory is a dangling symlink \(-> 'gone', which does "
                                                r'not exist\)'):
        scan_split(str(root / 'val'))
