"""EfficientNetV2 S/M/L/XL: the blocks, weights from torchvision and timm, and the B family's features on V2."""

import json

import pytest
import timm
import torch
import torchvision
from composer import Trainer
from composer.algorithms.stochastic_depth import apply_stochastic_depth

from composer_efficientnet import EfficientNet, WeightsError, benchmark, cli, composer_efficientnet, train, weights
from composer_efficientnet.algorithms import LabelSmoothing, SampleStochasticDepth, apply_sample_stochastic_depth
from composer_efficientnet.callbacks import DivergenceError, DivergenceGuard
from composer_efficientnet.data import build_digits_dataspec
from composer_efficientnet.efficientnet import MEMBERS
from composer_efficientnet.layers import FusedMBConv, MBConv
from composer_efficientnet.registry import REGISTRIES
from tests.conftest import digits_trainer
from tests.test_divergence import PoisonAt
from tests.test_weights import randomize_batchnorm, relative_error

V2 = [name for name in MEMBERS if name.startswith('efficientnet_v2_')]


def timm_name(name: str) -> str:
    return name.replace('efficientnet_v2_', 'efficientnetv2_')


SOURCES = [('torchvision', name) for name in V2 if hasattr(torchvision.models, name)] + [('timm', n) for n in V2]


@pytest.mark.parametrize('library,name', SOURCES)
def test_imported_outputs_equal_source_with_its_batchnorm_eps(library, name):
    """Outputs equal the source's at a size that is not a multiple of 32, through the pretrained path."""
    torch.manual_seed(0)
    source = (getattr(torchvision.models, name)() if library == 'torchvision' else
              timm.create_model(timm_name(name)))
    randomize_batchnorm(source)
    source.eval()
    model = composer_efficientnet(name, pretrained=source.state_dict()).module.eval()
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {
        1e-3 if library == 'torchvision' else 1e-5}
    x = torch.randn(1, 3, 33, 33) if name.endswith(('_l', '_xl')) else torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        assert relative_error(source(x), model(x)) < 1e-5


def test_fused_and_mbconv_stages():
    model = EfficientNet.from_name('efficientnet_v2_s')
    first, fused, mbconv = model.stages[0][0], model.stages[1][0], model.stages[3][0]
    assert isinstance(first, FusedMBConv) and isinstance(first.project, torch.nn.Identity) and first.has_residual
    assert first.fused.conv.kernel_size == (3, 3) and first.fused.conv.out_channels == 24
    assert hasattr(first.fused, 'act')
    assert fused.fused.conv.stride == (2, 2) and fused.fused.conv.out_channels == 96 and not hasattr(fused, 'se')
    assert not hasattr(fused.project, 'act') and not fused.has_residual and model.stages[1][1].has_residual
    assert isinstance(mbconv, MBConv) and mbconv.se.reduce.out_channels == 64 // 4  # of the block input
    assert [len(stage) for stage in model.stages] == [2, 4, 4, 6, 9, 15] and model.num_features == 1280
    assert model.stem.conv.out_channels == 24 and model.stem.bn.eps == 1e-3 and model.dropout.p == 0.2
    assert [MEMBERS[n].dropout for n in V2] == [0.2, 0.3, 0.4, 0.4]


def test_sample_stochastic_depth_and_composers_targets_reach_every_v2_block():
    model = EfficientNet.from_name('efficientnet_v2_s', drop_connect_rate=0.0)
    blocks = model.blocks()
    assert apply_sample_stochastic_depth(model, 0.2) == len(blocks) == 40
    assert model.drop_rates() == pytest.approx([0.2 * i / 40 if b.has_residual else 0 for i, b in enumerate(blocks)])
    apply_stochastic_depth(model, 'EfficientNetBlock', 'sample', drop_rate=0.4)
    assert model.drop_rates() == pytest.approx(
        [0.4 * (i + 1) / 40 if b.has_residual else 0 for i, b in enumerate(blocks)])
    before = model.drop_rates()
    apply_stochastic_depth(model, 'EfficientNetFusedMBConv', 'sample', drop_rate=0.1, drop_distribution='uniform')
    assert model.drop_rates() == pytest.approx(
        [0.1 if isinstance(b, FusedMBConv) and b.has_residual else r for b, r in zip(blocks, before)])
    assert sum(isinstance(b, FusedMBConv) for b in blocks) == 10
    with torch.device('meta'):
        theirs = torchvision.models.efficientnet_v2_s()
    assert apply_sample_stochastic_depth(theirs, 0.2) == 40  # torchvision's Fused-MBConv blocks too
    assert theirs.features[1][1].stochastic_depth.p == pytest.approx(0.2 / 40)


def test_a_recipe_may_target_every_v2_block_with_composers_stochastic_depth():
    from composer_efficientnet.recipe import validate
    recipe = validate({'model': {'efficientnet_v2_s': {'num_classes': 10}}, 'train_dataset': {'digits': {}},
                       'optimizers': {'sgd': {'lr': 0.1}}, 'max_duration': '1ba', 'train_batch_size': 8,
                       'algorithms': [{'stochastic_depth': {'target_layer_name': 'EfficientNetBlock',
                                                            'stochastic_method': 'sample', 'drop_rate': 0.2}}]})
    assert [entry.name for entry in recipe.algorithms] == ['stochastic_depth']


def test_short_fit_of_v2_s_on_digits_lowers_the_loss():
    torch.manual_seed(0)
    model = composer_efficientnet('efficientnet_v2_s', num_classes=10)
    held_out = build_digits_dataspec(batch_size=64, seed=1)
    images, targets = held_out.microbatch_transforms(next(iter(held_out.dataloader)))

    def loss() -> float:  # in train mode: a dozen steps leave BatchNorm's running statistics far from converged
        torch.manual_seed(5)
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model.module.train()(images), targets))

    before = loss()
    Trainer(model=model, train_dataloader=build_digits_dataspec(batch_size=16, seed=17), max_duration='12ba',
            algorithms=[SampleStochasticDepth(0.2), LabelSmoothing(0.1)], seed=17, device='cpu',
            optimizers=torch.optim.Adam(model.parameters(), lr=1e-3), progress_bar=False, log_to_console=False).fit()
    assert loss() < 0.9 * before
    assert model.module.drop_rates()[-1] == pytest.approx(0.2 * 39 / 40)


def test_divergence_guard_stops_a_v2_run(tmp_path):
    torch.manual_seed(0)
    trainer = digits_trainer(model=composer_efficientnet('efficientnet_v2_s', num_classes=10), max_duration='4ba',
                             callbacks=[DivergenceGuard(), PoisonAt(2)])
    with pytest.raises(DivergenceError, match='not finite .* at step 2; stopped at step 2'):
        trainer.fit()


def test_autoresume_of_a_v2_run_is_exact(tmp_path):
    """Two steps in one run equal one step, then a resumed second one, bit for bit."""
    recipe = {'model': {'efficientnet_v2_s': {'num_classes': 10}}, 'train_dataset': {'digits': {'image_size': 8}},
              'optimizers': {'sgd': {'lr': 0.05, 'momentum': 0.9}}, 'train_batch_size': 8, 'device': 'cpu',
              'progress_bar': False, 'autoresume': True, 'run_name': 'v2', 'save_interval': '1ba',
              'algorithms': [{'sample_stochastic_depth': {'drop_rate': 0.2}}]}
    finals = {}
    for label, durations in (('straight', ['2ba']), ('resumed', ['1ba', '2ba'])):
        folder = tmp_path / label
        for duration in durations:
            path = tmp_path / f'{label}-{duration}.yaml'
            path.write_text(json.dumps({**recipe, 'max_duration': duration, 'save_folder': str(folder)}))
            assert train.main([str(path)]) == 0
            if duration == '1ba':
                first_step = (folder / 'ep0-ba1-rank0.pt').stat().st_mtime_ns
        finals[label] = torch.load(folder / 'ep0-ba2-rank0.pt', weights_only=False)['state']['model']
    assert (tmp_path / 'resumed' / 'ep0-ba1-rank0.pt').stat().st_mtime_ns == first_step  # resumed, not redone
    assert finals['straight'].keys() == finals['resumed'].keys()
    assert all(torch.equal(finals['straight'][k], finals['resumed'][k]) for k in finals['straight'])


def test_eval_normalizes_as_the_weights_source_did(tmp_path):
    """torchvision's V2-L weights evaluate with mean and std 0.5: eval with them equals torchvision's outputs."""
    from tests.test_evaluate import _evaluate  # runs `composer-efficientnet eval` on the quickstart recipe
    torch.manual_seed(3)
    source = torchvision.models.efficientnet_v2_s(num_classes=10)
    randomize_batchnorm(source)
    path = tmp_path / 'torchvision_v2_s.pth'
    torch.save(source.eval().state_dict(), path)
    results = _evaluate(tmp_path, f'model={{efficientnet_v2_s: {{num_classes: 10, pretrained: {path}}}}}',
                        'val_dataset.digits.mean=[0.5, 0.5, 0.5]', 'val_dataset.digits.std=[0.5, 0.5, 0.5]',
                        'save_folder=null')
    data = build_digits_dataspec(is_train=False, image_size=16, batch_size=512)
    images, targets = next(iter(data.dataloader))
    with torch.no_grad():
        logits = source(images.float() / 127.5 - 1)
    assert round(results['top-1'] * len(targets) / 100) == int((logits.argmax(1) == targets).sum())
    expected = float(torch.nn.functional.cross_entropy(logits, targets))
    assert results['cross-entropy'] == pytest.approx(expected, rel=1e-4)


def test_registry_cli_and_benchmark_know_v2():
    assert {*V2, 'efficientnetv2_s'} <= set(REGISTRIES['models'].names())
    model = REGISTRIES['models'].get('efficientnetv2_s')(num_classes=3, dropout=0.1)
    assert model.module.stem.conv.out_channels == 24 and model.module.dropout.p == 0.1
    header, row = cli.family_table(['efficientnet_v2_s'])
    cells = dict(zip(header, row))
    assert cells['params'] == '21.46M' and cells['train/eval px'] == '300/384' and cells['paper top-1'] == '83.9%'
    assert 8.0 < float(cells['GMACs']) < 8.8  # paper: 8.8B at 384
    with torch.device('meta'):
        counts = {impl: sum(p.numel() for p in benchmark.build_loop_model(impl, 'efficientnet_v2_s').parameters())
                  for impl in ('ours-loop', 'torchvision', 'timm')}
    assert len(set(counts.values())) == 1, counts


def test_misfit_and_tensorflow_ported_v2_weights_are_named(tmp_path):
    with pytest.raises(WeightsError, match='looks like efficientnet_v2_s'):
        composer_efficientnet('efficientnet_v2_m', pretrained=timm.create_model('efficientnetv2_s').state_dict())
    path = tmp_path / 'tf_efficientnetv2_s.in1k.pth'
    torch.save({'conv_stem.weight': torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="looks like timm's tf_efficientnet weights"):
        weights.read_state_dict(path)


@pytest.mark.slow
def test_two_processes_train_v2_s_to_identical_weights(tmp_path):
    from tests.processes import launch
    from tests.test_distributed import OVERRIDES, QUICKSTART, _digests
    code, output = launch('composer_efficientnet.train', [
        QUICKSTART, *OVERRIDES, 'max_duration=2ba', 'model={efficientnet_v2_s: {num_classes: 10}}',
        f'save_folder={tmp_path / "checkpoints"}'], tmp_path)
    assert code == 0, output
    digests = {**_digests(output), **_digests((tmp_path / 'rank1.out').read_text())}
    assert sorted(digests) == [0, 1] and digests[0] == digests[1]
