"""The names every recipe can use out of the box: this package's pieces and what Composer 0.32 ships (all its
algorithms, callbacks but ``Generate``, which generates text with Hugging Face models, and loggers).

Composer's names follow the snake_case its own YAML recipes used.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from composer import algorithms as ca
from composer import callbacks as cc
from composer import loggers as cl
from composer import optim as co

from composer_efficientnet import algorithms, callbacks as our_callbacks, data
from composer_efficientnet.composer_model import EfficientNetClassifier, composer_efficientnet
from composer_efficientnet.efficientnet import MEMBERS
from composer_efficientnet.registry import REGISTRIES


def _member_builder(name: str):

    def build(num_classes: int = 1000, drop_connect_rate: float = 0.2, pretrained: Optional[str] = None,
              dropout: Optional[float] = None, bn_momentum: Optional[float] = None,
              bn_eps: Optional[float] = None, memory_efficient: bool = False) -> EfficientNetClassifier:
        overrides: dict[str, Any] = {'dropout': dropout, 'bn_momentum': bn_momentum, 'bn_eps': bn_eps}
        return composer_efficientnet(name, num_classes=num_classes, drop_connect_rate=drop_connect_rate,
                                     pretrained=pretrained, memory_efficient=memory_efficient,
                                     **{k: v for k, v in overrides.items() if v is not None})

    build.__name__ = f'build_{name}'
    build.__doc__ = (f'{name} as a Composer model (dropout and BatchNorm eps default to the member\'s, '
                     f'{MEMBERS[name].dropout} and {MEMBERS[name].bn_eps:g}; BatchNorm momentum to 0.1; memory_efficient '
                     'recomputes norms and activations in backward instead of keeping them).')
    return build


BUILTINS = {
    'models': {
        **{name: _member_builder(name) for name in MEMBERS},
        'efficientnetb0': _member_builder('efficientnet_b0'),  # Composer's name
        **{name.replace('efficientnet_v2_', 'efficientnetv2_'): _member_builder(name)  # timm's names
           for name in MEMBERS if name.startswith('efficientnet_v2_')},
    },
    'algorithms': {
        'alibi': ca.Alibi, 'augmix': ca.AugMix, 'blurpool': ca.BlurPool, 'channels_last': ca.ChannelsLast,
        'colout': ca.ColOut, 'cutmix': ca.CutMix, 'cutout': ca.CutOut, 'ema': ca.EMA, 'factorize': ca.Factorize,
        'gated_linear_units': ca.GatedLinearUnits, 'ghost_batchnorm': ca.GhostBatchNorm,
        'gradient_clipping': ca.GradientClipping, 'gyro_dropout': ca.GyroDropout,
        'label_smoothing': algorithms.LabelSmoothing, 'layer_freezing': ca.LayerFreezing,
        'low_precision_groupnorm': ca.LowPrecisionGroupNorm, 'low_precision_layernorm': ca.LowPrecisionLayerNorm,
        'mixup': ca.MixUp, 'no_op_model': ca.NoOpModel, 'progressive_resizing': ca.ProgressiveResizing,
        'randaugment': ca.RandAugment, 'sam': ca.SAM, 'selective_backprop': ca.SelectiveBackprop,
        'seq_length_warmup': ca.SeqLengthWarmup, 'squeeze_excite': ca.SqueezeExcite,
        'stochastic_depth': ca.StochasticDepth, 'swa': ca.SWA, 'weight_standardization': ca.WeightStandardization,
        'sample_stochastic_depth': algorithms.SampleStochasticDepth,
        'progressive_learning': algorithms.ProgressiveLearning,
    },
    'callbacks': {
        'activation_monitor': cc.ActivationMonitor, 'checkpoint_saver': our_callbacks.AtomicCheckpointSaver,
        'early_stopper': cc.EarlyStopper, 'export_for_inference': cc.ExportForInferenceCallback,
        'free_outputs': cc.FreeOutputs, 'load_checkpoint': cc.LoadCheckpoint,
        'image_visualizer': cc.ImageVisualizer, 'lr_monitor': cc.LRMonitor, 'memory_monitor': cc.MemoryMonitor,
        'memory_snapshot': cc.MemorySnapshot, 'mlperf': cc.MLPerfCallback, 'nan_monitor': cc.NaNMonitor,
        'oom_observer': cc.OOMObserver, 'optimizer_monitor': cc.OptimizerMonitor,
        'runtime_estimator': cc.RuntimeEstimator, 'speed_monitor': cc.SpeedMonitor,
        'system_metrics_monitor': cc.SystemMetricsMonitor, 'threshold_stopper': cc.ThresholdStopper,
        'training_curves': our_callbacks.TrainingCurves,
        'divergence_guard': our_callbacks.DivergenceGuard, 'host_reads': our_callbacks.HostReads,
    },
    'loggers': {
        'comet_ml': cl.CometMLLogger, 'console': cl.ConsoleLogger, 'file': cl.FileLogger,
        'in_memory': cl.InMemoryLogger, 'mlflow': cl.MLFlowLogger, 'mosaicml': cl.MosaicMLLogger,
        'neptune': cl.NeptuneLogger,
        'progress_bar': cl.ProgressBarLogger, 'remote_uploader_downloader': cl.RemoteUploaderDownloader,
        'slack': cl.SlackLogger, 'tensorboard': cl.TensorboardLogger, 'wandb': cl.WandBLogger,
    },
    'optimizers': {
        'sgd': torch.optim.SGD, 'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW,
        'rmsprop': torch.optim.RMSprop, 'decoupled_sgdw': co.DecoupledSGDW, 'decoupled_adamw': co.DecoupledAdamW,
    },
    'schedulers': {
        'constant': co.ConstantScheduler, 'constant_with_warmup': co.ConstantWithWarmupScheduler,
        'cosine_decay': co.CosineAnnealingScheduler, 'cosine_decay_with_warmup': co.CosineAnnealingWithWarmupScheduler,
        'cosine_warmrestart': co.CosineAnnealingWarmRestartsScheduler, 'exponential': co.ExponentialScheduler,
        'linear_decay': co.LinearScheduler, 'linear_decay_with_warmup': co.LinearWithWarmupScheduler,
        'multistep': co.MultiStepScheduler, 'multistep_with_warmup': co.MultiStepWithWarmupScheduler,
        'polynomial': co.PolynomialScheduler, 'polynomial_with_warmup': co.PolynomialWithWarmupScheduler,
        'step': co.StepScheduler,
    },
    'datasets': data.BUILDERS,
}

for _kind, _entries in BUILTINS.items():
    for _name, _obj in _entries.items():
        REGISTRIES[_kind].register(_name, func=_obj)
