"""Classify images: ``composer-efficientnet predict RECIPE|WEIGHTS IMAGE_OR_DIR... [--top 5] [--json PATH]``.

The model and weights are :func:`~composer_efficientnet.export.load_for_inference`'s: those ``eval`` evaluates
for a recipe, or a weights file's. Each image goes through the eval transform of the recipe's held-out data, or
of the weights' source (resize, center crop, interpolation, mean and std: torchvision's V2-L uses 0.5), and the
classes are named as the run named them (the ImageFolder class folder names its checkpoint records), ImageNet's
for torchvision's and timm's weights, else by their index.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, Dict, List, Optional, Sequence

import torch

from composer_efficientnet.arguments import parse, predict_parser
from composer_efficientnet.data.errors import CorruptImageError, DatasetLayoutError
from composer_efficientnet.data.imagefolder import IMAGE_EXTENSIONS, broken_symlink
from composer_efficientnet.data.transforms import (MAX_IMAGE_PIXELS, ImageTooLargeError, NormalizeOnDevice,
                                                    check_max_image_pixels, decode_image_bytes, image_transform)
from composer_efficientnet.export import InferenceModel, load_for_inference

__all__ = ['image_paths', 'read_images', 'predict', 'printable', 'main']


def printable(text: str) -> str:
    """``text`` for a terminal: control and other unprintable characters (ANSI escapes, newlines, carriage
    returns, bidirectional overrides) and backslashes escaped as Python's ``repr`` writes them (``\\x1b``,
    ``\\n``, ``\\u202e``, ``\\\\``), so a class or file name from someone else's checkpoint or folder cannot
    fake or erase lines of the output; letters of every script, and spaces, are kept as they are."""
    return ''.join(char if char.isprintable() and char != '\\' else repr(char)[1:-1] for char in str(text))


def image_paths(inputs: Sequence[str]) -> List[str]:
    """The files given, and every image under the folders given (recursively, sorted); a
    :class:`DatasetLayoutError` for a path that does not exist or a folder without images."""
    paths = []
    for given in inputs:
        if os.path.isfile(given):
            paths.append(given)
        elif os.path.isdir(given):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(given) for name in names
                           if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.'))
            if not found:
                raise DatasetLayoutError(f"'{given}': folder holds no images; expected files ending in "
                                         f"{', '.join(IMAGE_EXTENSIONS)} (any case), in it or its subfolders")
            paths.extend(found)
        elif broken_symlink(given):
            raise DatasetLayoutError(f"'{printable(given)}': {broken_symlink(given)}; give images or folders of "
                                     'images')
        else:
            raise DatasetLayoutError(f"'{printable(given)}': no such file or folder; give images or folders of "
                                     'images')
    return paths


def read_images(paths: Sequence[str], transform: Dict[str, Any], max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS
                ) -> torch.Tensor:
    """Decode and resize/crop every image (uint8, ``N x 3 x crop x crop``) before anything is classified; a
    :class:`CorruptImageError` names the first that cannot be read, or whose header gives more than
    ``max_image_pixels`` pixels (None: no limit; refused before it is decoded)."""
    check_max_image_pixels(max_image_pixels, '--max-image-pixels')
    resize_crop = image_transform(False, transform['crop_size'], transform['resize_size'],
                                  interpolation=transform['interpolation'])
    images = []
    for path in paths:
        try:
            with open(path, 'rb') as file:
                data = torch.frombuffer(bytearray(file.read()), dtype=torch.uint8)
            images.append(resize_crop(decode_image_bytes(data, max_image_pixels)))
        except ImageTooLargeError as error:
            raise CorruptImageError(f"'{printable(path)}': {error}; resize it, or raise --max-image-pixels to read "
                                    'it (decoded whole, it would take 3 bytes a pixel)') from None
        except (RuntimeError, OSError, ValueError) as error:
            reason = broken_symlink(path) or (str(error).strip().splitlines()[0] if str(error).strip() else
                                              type(error).__name__)
            raise CorruptImageError(f"'{printable(path)}': cannot be read as an image ({printable(reason)}); "
                                    'expected a JPEG, PNG, WebP or GIF file') from None
    return torch.stack(images)


def predict(model: InferenceModel, paths: Sequence[str], top: int = 5, batch_size: int = 32,
            max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> List[Dict[str, Any]]:
    """The ``top`` classes of each image, with probabilities: ``[{'image': path, 'top': [{'class': name,
    'index': i, 'probability': p}, ...]}, ...]``, in the order of ``paths``; names and paths exactly as they are
    (:func:`printable` escapes them for a terminal). Images over ``max_image_pixels`` are refused undecoded
    (:func:`read_images`)."""
    images = read_images(paths, model.transform, max_image_pixels)
    normalize = NormalizeOnDevice(model.transform['mean'], model.transform['std'])
    names = model.class_names
    results = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch, _ = normalize((images[start:start + batch_size], None))
            probabilities = model.module(batch).softmax(dim=1)
            values, indices = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
            for offset, (row_values, row_indices) in enumerate(zip(values.tolist(), indices.tolist())):
                results.append({'image': paths[start + offset], 'top': [
                    {'class': names[i] if names and i < len(names) else str(i), 'index': i, 'probability': p}
                    for p, i in zip(row_values, row_indices)]})
    return results


def main(argv: Optional[List[str]] = None) -> int:
    """Load the weights, classify, print (and with ``--json`` write) the top classes; mistakes exit with status
    2 and one line on stderr."""
    from composer_efficientnet.outputs import OutputError, atomic_output, output_problem
    from composer_efficientnet.recipe import RecipeError
    from composer_efficientnet.runner import log_around_progress_bars, report_recipe_error
    from composer_efficientnet.weights import WeightsError
    args = parse(predict_parser(), argv)
    log_around_progress_bars()
    overrides = [item for item in args.images if '=' in item and not os.path.exists(item)]
    inputs = [item for item in args.images if item not in overrides]
    problem = args.json and output_problem(args.json, 'predictions.json')
    try:
        if problem:
            raise DatasetLayoutError(f'--json: {problem}')
        paths = image_paths(inputs)
        if not paths:
            raise DatasetLayoutError('no images given; give image files or folders of images after the weights')
        model = load_for_inference(args.source, overrides)
        results = predict(model, paths, args.top, max_image_pixels=args.max_image_pixels)
    except RecipeError as error:
        if args.debug:
            traceback.print_exc()
        return report_recipe_error(error)
    except (WeightsError, DatasetLayoutError, CorruptImageError) as error:
        if args.debug:
            traceback.print_exc()
        print(f'composer-efficientnet predict: {error}', file=sys.stderr)
        return 2
    for result in results:  # names and paths escaped for the terminal; --json writes them exactly
        print(printable(result['image']))
        for entry in result['top']:
            print(f"  {entry['probability']:7.2%}  {printable(entry['class'])}")
    if args.json:
        try:
            with atomic_output(args.json, '--json', 'w') as file:
                json.dump({'model': model.name, 'weights': model.weights, 'predictions': results}, file, indent=2)
        except OutputError as error:
            if args.debug:
                traceback.print_exc()
            print(f'composer-efficientnet predict: {error}', file=sys.stderr)
            return 4
    return 0


if __name__ == '__main__':
    sys.exit(main())
