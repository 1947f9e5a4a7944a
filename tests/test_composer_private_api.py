"""Every private Composer name a module of ours relies on is listed at its top (``COMPOSER_PRIVATE_API``) and
still exists, with the parameters we rely on, in the installed Composer: a new Composer that renames or reshapes
one fails here, naming it, instead of misbehaving in a run."""

import importlib
import inspect
import pkgutil
import re

import pytest

import composer_efficientnet


def _modules():
    for info in pkgutil.walk_packages(composer_efficientnet.__path__, 'composer_efficientnet.'):
        if info.name.rsplit('.', 1)[-1] != '__main__':
            yield importlib.import_module(info.name)


def _listed():
    for module in _modules():
        for owner, name, relied_on in getattr(module, 'COMPOSER_PRIVATE_API', ()):
            yield pytest.param(module.__name__, owner, name, relied_on, id=f'{module.__name__}: {owner}.{name}')


def _resolve(dotted: str):
    """``composer.Trainer`` or ``composer.utils.checkpoint``: the longest importable module, then attributes."""
    parts = dotted.split('.')
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module('.'.join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(dotted)


def test_the_modules_known_to_reach_into_composer_list_what_they_use():
    listing = {module.__name__: {name for _, name, _ in getattr(module, 'COMPOSER_PRIVATE_API', ())}
               for module in _modules()}
    assert {'_train_microbatches', '_train_data_spec', '_original_model'} <= listing['composer_efficientnet.trainer']
    assert '_STOCHASTIC_LAYER_MAPPING' in listing['composer_efficientnet.algorithms.sample_stochastic_depth']


@pytest.mark.parametrize('module, owner, name, relied_on', _listed())
def test_listed_private_name_exists_as_we_rely_on_it(module, owner, name, relied_on):
    where = f'{module} relies on {owner}.{name}'
    target = _resolve(owner)
    if relied_on == 'attribute':  # set on instances: the owner's code must still assign it
        assert re.search(rf'self\.{name}\s*[:=]', inspect.getsource(target)), (
            f'{where}, which the installed Composer no longer sets')
        return
    assert hasattr(target, name), f'{where}, which the installed Composer no longer has'
    value = getattr(target, name)
    if relied_on == 'mapping':
        assert isinstance(value, dict), f'{where}, which is no longer a dict but {type(value).__name__}'
        return
    parameters = tuple(inspect.signature(value).parameters)
    assert parameters == tuple(relied_on), (f'{where} with parameters {relied_on}; the installed Composer has '
                                            f'{parameters}')
