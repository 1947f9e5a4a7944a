"""EfficientNet members as Composer models: metrics, a fused label-smoothed loss, pretrained imports."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from composer.loss import soft_cross_entropy
from composer.models import ComposerClassifier
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from composer_efficientnet import algorithms  # noqa: F401  (lets Composer's StochasticDepth target our blocks)
from composer_efficientnet import weights
from composer_efficientnet.backbones import EfficientNetFeatures
from composer_efficientnet.efficientnet import EfficientNet, canonical_name

__all__ = ['EfficientNetClassifier', 'PerImageCrossEntropy', 'composer_efficientnet', 'composer_efficientnetb0']

log = logging.getLogger(__name__)


class PerImageCrossEntropy(Metric):
    """Cross-entropy averaged over images, however they were batched or shared between processes.

    Composer's ``CrossEntropy`` averages the means of batches, so a short last batch, another batch size or
    another number of processes changes it; this one sums the loss of every image and divides by their count.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state('sum_loss', default=torch.tensor(0.0), dist_reduce_fx='sum')
        self.add_state('images', default=torch.tensor(0), dist_reduce_fx='sum')

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.sum_loss += soft_cross_entropy(logits, targets, reduction='sum')
        self.images += logits.shape[0]

    def compute(self) -> torch.Tensor:
        return self.sum_loss / self.images


class EfficientNetClassifier(ComposerClassifier):
    """A :class:`~composer.models.ComposerClassifier` whose loss applies label smoothing itself.

    With integer targets the loss is ``F.cross_entropy(..., label_smoothing=label_smoothing)``: one fused
    kernel and no dense one-hot targets. Dense (soft) targets, from other algorithms, are smoothed and
    passed to Composer's ``soft_cross_entropy``. Metrics: train accuracy; validation top-1, top-5 and
    cross-entropy per image.
    """

    def __init__(self, module: EfficientNet, label_smoothing: float = 0.0) -> None:
        num_classes = module.num_classes
        val_metrics = MetricCollection({
            'MulticlassAccuracy': MulticlassAccuracy(num_classes=num_classes, average='micro'),
            'Top5Accuracy': MulticlassAccuracy(num_classes=num_classes, top_k=min(5, num_classes), average='micro'),
            'CrossEntropy': PerImageCrossEntropy(),
        })
        # validate_args=False: the argument checks read tensor values on the host, a sync on every step
        train_metrics = MulticlassAccuracy(num_classes=num_classes, average='micro', validate_args=False)
        super().__init__(module, num_classes=num_classes, train_metrics=train_metrics, val_metrics=val_metrics)
        self.label_smoothing = label_smoothing

    def loss(self, outputs: torch.Tensor, batch: Tuple[Any, torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        _, targets = batch
        if targets.dtype in (torch.int64, torch.int32) and targets.ndim == outputs.ndim - 1:
            return F.cross_entropy(outputs, targets, *args, label_smoothing=self.label_smoothing, **kwargs)
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / outputs.shape[1]
        return soft_cross_entropy(outputs, targets, *args, **kwargs)


def composer_efficientnet(name: str = 'efficientnet_b0', num_classes: int = 1000, drop_connect_rate: float = 0.2,
                          pretrained: Optional[Union[str, os.PathLike, Mapping[str, torch.Tensor]]] = None,
                          features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3, 4),
                          **overrides: Any) -> Union[EfficientNetClassifier, EfficientNetFeatures]:
    """Any EfficientNet member as a Composer model, optionally initialized from a torchvision or timm file.

    With ``features_only`` it is instead the feature-map network of :meth:`EfficientNet.from_name` (levels
    ``out_indices``), ``pretrained`` loaded but for the head and classifier: a backbone, not a Composer model.

    ``pretrained`` is a weights file or a state dict; torchvision's and timm's build the model with the BatchNorm
    eps their source trained with (see :func:`weights.load_pretrained`). With a ``num_classes`` other than the
    checkpoint's, or a checkpoint without a classifier (a backbone), every weight but the classifier's is loaded
    (fine-tuning). ``overrides`` go to :meth:`EfficientNet.from_name`: ``memory_efficient=True``, say, trains
    keeping at most 0.40x torchvision's activations for backward, with the same outputs and gradients.

    Example:
        >>> from composer_efficientnet import composer_efficientnet
        >>> model = composer_efficientnet('efficientnet_b1', num_classes=10)
        >>> type(model).__name__, model.num_classes
        ('EfficientNetClassifier', 10)
    """
    name = canonical_name(name)
    state_dict, notice = None, ''  # notice: why the classifier keeps its initialization, if it does
    if pretrained is not None:
        source = weights.as_state_dict(pretrained)
        overrides = {**weights.source_bn_overrides(source, name), **overrides}
        state_dict = weights.to_native(source)
        if 'classifier.weight' not in state_dict:
            notice = 'The pretrained weights have no classifier (a backbone)'
        elif (source_classes := state_dict['classifier.weight'].shape[0]) != num_classes:
            notice = f'Pretrained classifier has {source_classes} classes, the model {num_classes}'
    if features_only:
        module = EfficientNet.from_name(name, drop_connect_rate=drop_connect_rate, features_only=True,
                                        out_indices=out_indices, **overrides)
        if state_dict is not None:
            weights.load_pretrained(module, source)
        return module
    module = EfficientNet.from_name(name, num_classes=num_classes, drop_connect_rate=drop_connect_rate, **overrides)
    if state_dict is not None:
        weights.load_pretrained(module, source, skip_prefixes=('classifier.',) if notice else ())
        if notice:  # said once everything else has loaded
            log.warning('%s: the classifier keeps its initialization.', notice)
    return EfficientNetClassifier(module)


def composer_efficientnetb0(num_classes: int = 1000, drop_connect_rate: float = 0.2) -> EfficientNetClassifier:
    """EfficientNet-B0 as in Composer's original model card (77.22% ImageNet top-1 with its recipe).

    Example:
        >>> from composer_efficientnet import composer_efficientnetb0
        >>> model = composer_efficientnetb0(num_classes=1000, drop_connect_rate=0.2)
    """
    return composer_efficientnet('efficientnet_b0', num_classes=num_classes, drop_connect_rate=drop_connect_rate)
