"""Classify images: ``composer-efficientnet predict RECIPE|WEIGHTS IMAGE_OR_DIR... [--top 5] [--json PATH]``.

The model and weights are :func:`~composer_efficientnet.export.load_for_inference`'s: those ``eval`` evaluates
for a recipe, or a weights file's. Each image goes through the eval transform of the recipe's held-out data, or
of the weights' source (resize, center crop, interpolation, mean and std: torchvision's V2-L uses 0.5), and the
classes are named as the run named them (the ImageFolder class folder names its checkpoint records), ImageNet's
for torchvision's and timm's weights, else by their index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

from composer_efficientnet.data.errors import CorruptImageError, DatasetLayoutError
from composer_efficientnet.data.imagefolder import IMAGE_EXTENSIONS
from composer_efficientnet.data.transforms import NormalizeOnDevice, decode_image_bytes, image_transform
from composer_efficientnet.export import InferenceModel, load_for_inference

__all__ = ['image_paths', 'read_images', 'predict', 'main']


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
        else:
            raise DatasetLayoutError(f"'{given}': no such file or folder; give images or folders of images")
    return paths


def read_images(paths: Sequence[str], transform: Dict[str, Any]) -> torch.Tensor:
    """Decode and resize/crop every image (uint8, ``N x 3 x crop x crop``) before anything is classified; a
    :class:`CorruptImageError` names the first that cannot be read."""
    resize_crop = image_transform(False, transform['crop_size'], transform['resize_size'],
                                  interpolation=transform['interpolation'])
    images = []
    for path in paths:
        try:
            with open(path, 'rb') as file:
                data = torch.frombuffer(bytearray(file.read()), dtype=torch.uint8)
            images.append(resize_crop(decode_image_bytes(data)))
        except (RuntimeError, OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CorruptImageError(f"'{path}': cannot be read as an image ({reason}); expected a JPEG, PNG, WebP "
                                    'or GIF file') from None
    return torch.stack(images)


def predict(model: InferenceModel, paths: Sequence[str], top: int = 5, batch_size: int = 32) -> List[Dict[str, Any]]:
    """The ``top`` classes of each image, with probabilities: ``[{'image': path, 'top': [{'class': name,
    'index': i, 'probability': p}, ...]}, ...]``, in the order of ``paths``."""
    images = read_images(paths, model.transform)
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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of classes, got '{text}'")
    return int(text)


def main(argv: Optional[List[str]] = None) -> int:
    """Load the weights, classify, print (and with ``--json`` write) the top classes; mistakes exit with status
    2 and one line on stderr."""
    from composer_efficientnet.evaluate import _unwritable
    from composer_efficientnet.recipe import RecipeError
    from composer_efficientnet.runner import log_around_progress_bars, report_recipe_error
    from composer_efficientnet.weights import WeightsError
    parser = argparse.ArgumentParser(prog='composer-efficientnet predict',
                                     description=__doc__.splitlines()[0].replace('``', ''))
    parser.add_argument('source', metavar='RECIPE|WEIGHTS', help='a YAML recipe (as for eval) or a weights file')
    parser.add_argument('images', nargs='+', metavar='IMAGE_OR_DIR', help='image files or folders of images; a '
                        "recipe's dotted.key=value overrides may come first")
    parser.add_argument('--top', type=_positive, default=5, help='classes to print per image (default: 5)')
    parser.add_argument('--json', metavar='PATH', help='also write the predictions to this JSON file')
    parser.add_argument('--debug', action='store_true', help='show tracebacks instead of one-line errors')
    args = parser.parse_args(argv)
    log_around_progress_bars()
    overrides = [item for item in args.images if '=' in item and not os.path.exists(item)]
    inputs = [item for item in args.images if item not in overrides]
    problem = args.json and _unwritable(args.json)
    try:
        if problem:
            raise DatasetLayoutError(f'--json: {problem}')
        paths = image_paths(inputs)
        if not paths:
            raise DatasetLayoutError('no images given; give image files or folders of images after the weights')
        model = load_for_inference(args.source, overrides)
        results = predict(model, paths, args.top)
    except RecipeError as error:
        if args.debug:
            raise
        return report_recipe_error(error)
    except (WeightsError, DatasetLayoutError, CorruptImageError) as error:
        if args.debug:
            raise
        print(f'composer-efficientnet predict: {error}', file=sys.stderr)
        return 2
    for result in results:
        print(result['image'])
        for entry in result['top']:
            print(f"  {entry['probability']:7.2%}  {entry['class']}")
    if args.json:
        with open(args.json, 'w') as file:
            json.dump({'model': model.name, 'weights': model.weights, 'predictions': results}, file, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
