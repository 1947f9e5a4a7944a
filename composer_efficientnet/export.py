"""Export a model for deployment: ``composer-efficientnet export RECIPE|WEIGHTS [--format onnx|torchscript|export]``.

The weights are those ``eval`` evaluates for a YAML recipe (``load_path``, else the newest checkpoint of its
``save_folder``, else the model's ``pretrained`` file), loaded the same way (:func:`checkpoint_to_load`, with the
recipe's algorithms and the checks that the checkpoint fits and runs no code), or a torchvision, timm or
composer_efficientnet weights file. The file takes normalized images of the eval transform's size with any batch
size, and records that transform and the class names in its metadata. ``--check`` runs the written file
(onnxruntime for ONNX) on random images and prints the largest difference from the eager model.
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from composer_efficientnet.arguments import FORMATS, export_parser, parse

__all__ = ['InferenceModel', 'load_for_inference', 'recipe_eval_transform', 'with_imagenet_defaults',
           'imagenet_class_names', 'export_model', 'read_metadata', 'run_exported', 'FORMATS', 'main']

#: The metadata entry of TorchScript and torch.export files (ONNX: one metadata property per key).
METADATA_FILE = 'metadata.json'


@dataclass
class InferenceModel:
    """A network with its weights, in eval mode on the CPU, and what it needs to classify an image."""
    module: nn.Module
    name: str  # the member
    weights: str  # where the weights came from
    transform: Dict[str, Any]  # crop_size, resize_size, interpolation, mean, std
    class_names: Optional[List[str]]

    def metadata(self) -> Dict[str, str]:
        """String metadata for an exported file: the input shape (without the batch), the eval transform and the
        class names (JSON), the member and the weights."""
        size = self.transform['crop_size']
        return {'model': self.name, 'weights': self.weights, 'input_size': json.dumps([3, size, size]),
                'eval_transform': json.dumps(self.transform), 'class_names': json.dumps(self.class_names)}


def imagenet_class_names() -> List[str]:
    """ImageNet-1k's class names in label order, as torchvision ships them in its weights metadata (offline)."""
    from torchvision.models import EfficientNet_B0_Weights
    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta['categories'])


def recipe_eval_transform(recipe: Any) -> Dict[str, Any]:
    """The eval transform of a recipe's ``val_dataset`` (its parameters, the builder's defaults filled in): crop
    and resize size, interpolation, mean and std, as ``MemberConfig.eval_transform`` gives them."""
    from composer_efficientnet.data.transforms import val_resize_size
    entry = recipe.val_dataset
    params = {name: p.default for name, p in inspect.signature(entry.target).parameters.items()
              if p.default is not inspect.Parameter.empty}
    params.update(entry.params)
    if 'image_size' in params:  # digits and synthetic data: whole images of that size, nothing cropped
        crop = params['image_size'] or recipe.model_resolution
        resize = crop
    else:
        crop = params.get('crop_size') or recipe.model_resolution
        resize = val_resize_size(crop, params.get('resize_size', -1))
    return with_imagenet_defaults({'crop_size': crop, 'resize_size': resize, 'mean': params.get('mean'),
                                    'interpolation': params.get('interpolation', 'bilinear'), 'std': params.get('std')})


def with_imagenet_defaults(transform: Dict[str, Any]) -> Dict[str, Any]:
    """``transform`` with ImageNet's mean and std where it gives none, as the datasets normalize."""
    from composer_efficientnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    return {**transform, 'mean': list(transform['mean'] or IMAGENET_MEAN),
            'std': list(transform['std'] or IMAGENET_STD)}


def _from_recipe(path: str, overrides: Sequence[str]) -> InferenceModel:
    """The recipe's model with the weights ``eval`` would evaluate, loaded as ``eval`` loads them."""
    from composer import Trainer

    from composer_efficientnet.callbacks.class_names import class_names_in
    from composer_efficientnet.evaluate import checkpoint_to_load
    from composer_efficientnet.recipe import load_recipe, validate
    from composer_efficientnet.resume import checkpoint_must_fit
    from composer_efficientnet.safe_load import read_checkpoint
    from composer_efficientnet.weights import as_state_dict, detect_format
    recipe = validate(load_recipe(path, overrides), purpose='eval')
    checkpoint = checkpoint_to_load(recipe)
    model = recipe.model.build()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='No optimizer was specified')
        trainer = checkpoint_must_fit(recipe, checkpoint, lambda: Trainer(
            model=model, algorithms=[entry.build() for entry in recipe.algorithms], device='cpu',
            progress_bar=False, loggers=[], load_path=checkpoint, load_weights_only=True))
    trainer.close()
    pretrained = recipe.model.params.get('pretrained')
    if checkpoint is not None:
        names = (class_names_in(read_checkpoint(checkpoint), where=f"'{checkpoint}'")
                 if not recipe.settings.get('load_trusted') else None)
    else:
        names = _source_class_names(detect_format(as_state_dict(pretrained)), model.module.num_classes)
    return InferenceModel(model.module.eval(), recipe.model.name, str(checkpoint or pretrained),
                          recipe_eval_transform(recipe), names)


def _source_class_names(source: str, num_classes: int) -> Optional[List[str]]:
    """ImageNet's names for torchvision's and timm's 1,000-class weights; none known otherwise."""
    return imagenet_class_names() if source in ('torchvision', 'timm') and num_classes == 1000 else None


def _from_weights(path: str) -> InferenceModel:
    """A torchvision, timm or composer_efficientnet weights file (a Composer checkpoint too), evaluated as its
    source evaluates it (the member's eval transform)."""
    from composer_efficientnet.callbacks.class_names import class_names_in
    from composer_efficientnet.efficientnet import MEMBERS, EfficientNet
    from composer_efficientnet.safe_load import read_checkpoint
    from composer_efficientnet.weights import (WeightsError, detect_format, guess_member, load_pretrained,
                                               read_state_dict, source_bn_overrides, to_native)
    state_dict = read_state_dict(path)
    native = to_native(state_dict)
    member = guess_member(native)
    if member not in MEMBERS or 'classifier.weight' not in native:
        raise WeightsError(f"Weights '{path}' are not those of a whole EfficientNet classifier (they look like "
                           f'{member}{"" if "classifier.weight" in native else ", without a classifier"}); give a '
                           'torchvision, timm or composer_efficientnet classifier, or the recipe that trained it.')
    num_classes = native['classifier.weight'].shape[0]
    module = EfficientNet.from_name(member, num_classes=num_classes, **source_bn_overrides(state_dict, member))
    load_pretrained(module, state_dict)
    source = detect_format(state_dict)
    names = (class_names_in(read_checkpoint(path), where=f"'{path}'") if source == 'composer_efficientnet'
             and not path.endswith('.safetensors') else _source_class_names(source, num_classes))
    return InferenceModel(module.eval(), member, path, with_imagenet_defaults(MEMBERS[member].eval_transform()),
                          names)


def load_for_inference(source: str, overrides: Sequence[str] = ()) -> InferenceModel:
    """A YAML recipe's model with the weights ``eval`` would evaluate (``overrides`` as on the command line),
    or the model of a weights file; see the module's docstring. Raises ``RecipeError`` or ``WeightsError``."""
    if source.endswith(('.yaml', '.yml')):
        return _from_recipe(source, overrides)
    return _from_weights(source)


def _example(model: InferenceModel, batch: int = 2) -> torch.Tensor:
    size = model.transform['crop_size']
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def export_model(model: InferenceModel, path: str, fmt: str = 'onnx', label: str = 'export') -> None:
    """Write ``model`` to ``path`` as ONNX, TorchScript or a ``torch.export`` program, with a dynamic batch
    dimension and :meth:`InferenceModel.metadata`.

    The file is written whole or not at all (:func:`~composer_efficientnet.outputs.atomic_output`): the model is
    converted first, then written to a hidden temporary file beside ``path`` (same ending), synced and renamed.
    A failed write (a full disk, a read-only folder) raises :class:`~composer_efficientnet.outputs.OutputError`,
    one line starting with ``label``, and leaves nothing under ``path``.

    Args:
        model: what :func:`load_for_inference` gives.
        path: the file to write.
        fmt: ``onnx`` (needs the ``onnx`` package: ``pip install composer-efficientnet[export]``), ``torchscript``
            or ``export``.
        label: what gave ``path``, for the message of a failed write.
    """
    from composer_efficientnet.outputs import atomic_output
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    example, metadata = _example(model), model.metadata()
    with torch.no_grad():
        if fmt == 'onnx':
            import onnx
            exported = io.BytesIO()  # in memory: the metadata goes in before anything is written to disk
            torch.onnx.export(model.module, (example,), exported, input_names=['images'], output_names=['logits'],
                              dynamic_axes={'images': {0: 'batch'}, 'logits': {0: 'batch'}}, dynamo=False,
                              opset_version=17)
            graph = onnx.load_model_from_string(exported.getvalue())
            onnx.helper.set_model_props(graph, metadata)
            write = functools.partial(onnx.save, graph)
        elif fmt == 'torchscript':
            traced = torch.jit.trace(model.module, example)
            write = functools.partial(torch.jit.save, traced, _extra_files={METADATA_FILE: json.dumps(metadata)})
        else:
            program = torch.export.export(model.module, (example,),
                                          dynamic_shapes=({0: torch.export.Dim('batch', min=1, max=65536)},))
            write = functools.partial(torch.export.save, program, extra_files={METADATA_FILE: json.dumps(metadata)})
        with atomic_output(path, label) as file:
            write(file)


def run_exported(path: str, fmt: str, images: torch.Tensor) -> torch.Tensor:
    """The logits of an exported file for ``images`` (onnxruntime for ONNX), and nothing of ours in between."""
    if fmt == 'onnx':
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
        return torch.from_numpy(session.run(None, {'images': images.numpy()})[0])
    with torch.no_grad():
        if fmt == 'torchscript':
            return torch.jit.load(path)(images)
        return torch.export.load(path).module()(images)


def read_metadata(path: str, fmt: str) -> Dict[str, str]:
    """The metadata :func:`export_model` wrote into the file."""
    if fmt == 'onnx':
        import onnx
        return {prop.key: prop.value for prop in onnx.load(path, load_external_data=False).metadata_props}
    extra = {METADATA_FILE: ''}
    if fmt == 'torchscript':
        torch.jit.load(path, _extra_files=extra)
    else:
        torch.export.load(path, extra_files=extra)
    text = extra[METADATA_FILE]
    return json.loads(text.decode() if isinstance(text, bytes) else text)


def main(argv: Optional[List[str]] = None) -> int:
    """Load the weights, export, optionally check; mistakes exit with status 2 and one line on stderr."""
    from composer_efficientnet.outputs import OutputError, folder_problem, output_problem
    from composer_efficientnet.recipe import RecipeError
    from composer_efficientnet.runner import log_around_progress_bars, report_recipe_error
    from composer_efficientnet.weights import WeightsError
    args = parse(export_parser(), argv)
    log_around_progress_bars()
    if args.format == 'onnx' and not _has_onnx():
        print('composer-efficientnet export: --format onnx needs the onnx and onnxruntime packages: pip install '
              "'composer-efficientnet[export]', or use --format torchscript or export", file=sys.stderr)
        return 2
    # Before the weights are loaded; without --out, the file goes in the current folder under the member's name.
    problem = output_problem(args.out, 'model' + FORMATS[args.format]) if args.out else folder_problem('.')
    if problem:
        print(f'composer-efficientnet export: --out: {problem}', file=sys.stderr)
        return 2
    try:
        model = load_for_inference(args.source, args.overrides)
    except RecipeError as error:
        if args.debug:
            traceback.print_exc()
        return report_recipe_error(error)
    except WeightsError as error:
        if args.debug:
            traceback.print_exc()
        print(f'composer-efficientnet export: {error}', file=sys.stderr)
        return 2
    out = args.out or model.name + FORMATS[args.format]
    try:
        problem = None if args.out else output_problem(out, 'model' + FORMATS[args.format])
        if problem:
            raise OutputError(f'--out: {problem}')
        export_model(model, out, args.format, label='--out')
    except OutputError as error:
        if args.debug:
            traceback.print_exc()
        print(f'composer-efficientnet export: {error}', file=sys.stderr)
        return 2 if problem else 4
    size = model.transform['crop_size']
    print(f'wrote {out} ({args.format}): {model.name}, weights {model.weights}, input (batch, 3, {size}, {size})')
    if args.check:
        images = _example(model, batch=3)  # another batch size than the traced one
        with torch.no_grad():
            expected = model.module(images)
        difference = (run_exported(out, args.format, images) - expected).abs().max().item()
        print(f'check: largest difference from eager {difference:.3g} (logits up to '
              f'{expected.abs().max().item():.3g}), batch of 3')
    return 0


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == '__main__':
    sys.exit(main())
