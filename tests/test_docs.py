"""Every fenced code block of README.md and docs/*.md is run (tiny sizes) or marked with a reason; every relative
link points to an existing file and heading. The convention is written at the top of docs/development.md."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
RUN = {'python', 'bash', 'console', 'yaml'}
COMMAND = 'composer-efficientnet'
QUICKSTART = 'recipes/quickstart.yaml'
#: Appended to every command whose recipe is the quickstart (after the line's own overrides, so they win).
TINY = ['max_duration=2ba', 'train_batch_size=16', 'eval_batch_size=64', 'eval_subset_num_batches=1',
        'progress_bar=false', 'train_dataset.digits.image_size=16', 'val_dataset.digits.image_size=16']
MARK = re.compile(r'^<!--\s*(not run|output of):\s*(.*?)\s*-->$')


@dataclass
class Block:
    page: Path
    line: int          # 1-based line of the opening fence
    lang: str
    text: str
    mark: Optional[Tuple[str, str]]   # ('not run', reason) or ('output of', command)

    @property
    def where(self) -> str:
        return f'{self.page.relative_to(ROOT)}:{self.line}'


def blocks_of(page: Path) -> List[Block]:
    lines = page.read_text().split('\n')
    found, index = [], 0
    while index < len(lines):
        fence = re.match(r'^```\s*(\S*)', lines[index])
        if not fence:
            index += 1
            continue
        start = index
        index += 1
        while index < len(lines) and not lines[index].startswith('```'):
            index += 1
        assert index < len(lines), f'{page}:{start + 1}: unclosed code fence'
        before = lines[start - 1].strip() if start else ''
        mark = MARK.match(before)
        assert mark or not before.startswith('<!--'), (
            f'{page}:{start}: a comment before a fence must be <!-- not run: REASON --> or <!-- output of: COMMAND -->')
        found.append(Block(page, start + 1, fence.group(1).lower(), '\n'.join(lines[start + 1:index]),
                           (mark.group(1), mark.group(2)) if mark else None))
        index += 1
    return found


BLOCKS = {page: blocks_of(page) for page in PAGES}


# -- files the blocks name, made once per module and linked into each page's folder ---------------------------

def _torchvision_state(name: str, path: Path) -> None:
    import torch
    import torchvision
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, name)().state_dict(), path)


def _timm_b2(path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model('efficientnet_b2').state_dict().items()}, str(path))


def _image(path: Path, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)


FILES = {
    'efficientnet_b0_rwightman-7f5810bc.pth': lambda p: _torchvision_state('efficientnet_b0', p),
    'efficientnet_v2_s-dd5fe13b.pth': lambda p: _torchvision_state('efficientnet_v2_s', p),
    'timm_b2.safetensors': _timm_b2,
    'digit.png': _image,
    'photo.png': _image,
    'photos': lambda p: [_image(p / f'{i}.png', i) for i in range(2)],
}


@pytest.fixture(scope='module')
def made(tmp_path_factory) -> Dict[str, Path]:
    """The FILES the run blocks name, each made on first use."""
    folder, cache = tmp_path_factory.mktemp('docs_files'), {}

    def get(name: str) -> Path:
        if name not in cache:
            FILES[name](folder / name)
            cache[name] = folder / name
        return cache[name]

    return get


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory) -> Path:
    """One tiny quickstart run (2 batches at 16x16): its runs/ folder, copied into every page's folder."""
    from composer_efficientnet.cli import main
    folder = tmp_path_factory.mktemp('docs_run')
    (folder / 'recipes').symlink_to(ROOT / 'recipes')
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(['train', QUICKSTART, *TINY]) == 0
    finally:
        os.chdir(cwd)
    assert list((folder / 'runs' / 'quickstart' / 'checkpoints').glob('ep*-ba2-rank0.pt'))
    return folder / 'runs'


# -- running blocks --------------------------------------------------------------------------------------------

EXPECT = re.compile(r'^(\s*)(.*?)\s+# -> (.+)$')


def python_source(text: str) -> str:
    """The block with each ``EXPR  # -> VALUE`` line turned into an assertion that EXPR == VALUE."""
    out = []
    for number, line in enumerate(text.split('\n'), 1):
        expect = EXPECT.match(line)
        if expect:
            indent, expr, value = expect.groups()
            ast.parse(expr, mode='eval')
            ast.literal_eval(value)
            line = f'{indent}__docs_expect__(({expr}), {value}, {number})'
        out.append(line)
    return '\n'.join(out)


def _expect(actual, expected, number) -> None:
    assert actual == expected, f'block line {number}: {actual!r}, the docs say {expected!r}'


def run_python(block: Block) -> None:
    namespace = {'__name__': '__docs__', '__docs_expect__': _expect}
    exec(compile(python_source(block.text), block.where, 'exec'), namespace)


def commands_of(block: Block) -> List[List[str]]:
    """The ``composer-efficientnet`` command lines of a bash block; any other line is an error."""
    joined = block.text.replace('\\\n', ' ')
    commands = []
    for line in joined.split('\n'):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assert words[0] == COMMAND, (
            f'{block.where}: {line.strip()!r} is not a {COMMAND} command: mark the block <!-- not run: REASON -->')
        commands.append(words[1:])
    return commands


def tiny(argv: List[str]) -> List[str]:
    return [*argv, *TINY] if len(argv) > 1 and argv[0] in ('train', 'eval', 'export', 'predict') \
        and argv[1] == QUICKSTART else argv


def run_command(argv: List[str], where: str) -> None:
    from composer_efficientnet.cli import main
    code = main(tiny(argv))
    assert code in (0, None), f'{where}: {COMMAND} {" ".join(argv)} exited {code}'


def run_yaml(block: Block) -> None:
    import yaml

    from composer_efficientnet.recipe import load_recipe, validate
    fragment = yaml.safe_load(block.text)
    assert isinstance(fragment, dict) and fragment, f'{block.where}: a yaml block is a mapping of recipe sections'
    config = load_recipe(ROOT / QUICKSTART, [f'{key}={json.dumps(value)}' for key, value in fragment.items()])
    for key, value in fragment.items():
        assert config[key] == value, f'{block.where}: {key} did not merge into the recipe'
    validate(config)


def run_output(block: Block, capsys) -> None:
    from composer_efficientnet.cli import main
    words = shlex.split(block.mark[1])
    assert words[0] == COMMAND, f'{block.where}: output of what? {block.mark[1]!r}'
    capsys.readouterr()
    main(words[1:])
    captured = capsys.readouterr()
    printed = (captured.out + captured.err).strip().split('\n')
    assert printed == block.text.strip().split('\n'), f'{block.where}: the command now prints\n' + '\n'.join(printed)


def prepare(folder: Path, blocks: List[Block], tiny_run: Path, made) -> None:
    (folder / 'recipes').symlink_to(ROOT / 'recipes')
    shutil.copytree(tiny_run, folder / 'runs', copy_function=os.link)
    text = '\n'.join(block.text for block in blocks)
    for name in FILES:
        if name in text:
            source = made(name)
            if source.is_dir():
                shutil.copytree(source, folder / name)
            else:
                os.link(source, folder / name)


def runnable(block: Block) -> bool:
    return block.mark is None or block.mark[0] == 'output of'


RUN_PAGES = [page for page, blocks in BLOCKS.items() if any(runnable(b) for b in blocks)]


@pytest.mark.parametrize('page', RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_page_blocks_run(page: Path, tmp_path: Path, tiny_run: Path, made, capsys) -> None:
    blocks = [block for block in BLOCKS[page] if runnable(block)]
    prepare(tmp_path, blocks, tiny_run, made)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in blocks:
            if block.mark:
                run_output(block, capsys)
            elif block.lang == 'python':
                run_python(block)
            elif block.lang == 'yaml':
                run_yaml(block)
            else:
                for argv in commands_of(block):
                    run_command(argv, block.where)
    finally:
        os.chdir(cwd)


def test_every_block_is_run_or_marked_with_a_reason() -> None:
    unmarked, not_run, run = [], [], 0
    for blocks in BLOCKS.values():
        for block in blocks:
            if block.mark and block.mark[0] == 'not run':
                assert block.mark[1], f'{block.where}: <!-- not run: --> needs a reason'
                not_run.append(f'{block.where}: {block.mark[1]}')
            elif block.mark or block.lang in RUN:
                run += 1
                if block.lang in ('bash', 'console') and not block.mark:
                    assert commands_of(block), f'{block.where}: a bash block with no {COMMAND} command'
            else:
                unmarked.append(f'{block.where} (```{block.lang})')
    assert not unmarked, 'blocks neither run nor marked <!-- not run: REASON -->: ' + ', '.join(unmarked)
    print('\nnot run:\n  ' + '\n  '.join(not_run))
    assert run >= 14 and len(not_run) <= 10, (run, not_run)


def test_checks_can_fail(tmp_path: Path) -> None:
    """A wrong shown value, a foreign command and a bare comment before a fence are each caught."""
    with pytest.raises(AssertionError, match='the docs say 3'):
        run_python(Block(ROOT, 1, 'python', 'x = 1\nx + 1   # -> 3', None))
    run_python(Block(ROOT, 1, 'python', 'x = 1\nx + 1   # -> 2', None))
    with pytest.raises(AssertionError, match='not a composer-efficientnet command'):
        commands_of(Block(ROOT, 1, 'bash', 'pip install torch', None))
    page = tmp_path / 'page.md'
    page.write_text('<!-- skip -->\n```python\npass\n```\n')
    with pytest.raises(AssertionError, match='must be <!-- not run'):
        blocks_of(page)


# -- links -----------------------------------------------------------------------------------------------------

def prose(page: Path) -> str:
    """The page without fenced blocks and inline code."""
    text = re.sub(r'^```.*?^```', '', page.read_text(), flags=re.S | re.M)
    return re.sub(r'`[^`\n]*`', '', text)


def anchors(page: Path) -> set:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces to -, repeats numbered."""
    seen: Dict[str, int] = {}
    for heading in re.findall(r'^#{1,6} (.+?)\s*$', re.sub(r'^```.*?^```', '', page.read_text(), flags=re.S | re.M),
                              flags=re.M):
        slug = ''.join(c for c in unicodedata.normalize('NFKC', heading.lower().replace('`', ''))
                       if c.isalnum() or c in ' -_').replace(' ', '-')
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f'{slug}-{seen[slug]}'] = 0
    return set(seen)


def test_relative_links_point_to_files_and_headings() -> None:
    broken, count = [], 0
    for page in PAGES:
        for target in re.findall(r'\]\(([^)\s]+)\)', prose(page)):
            if re.match(r'^[a-z]+:', target):
                continue
            count += 1
            path, _, anchor = target.partition('#')
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f'{page.relative_to(ROOT)}: {target} (no such file)')
            elif anchor and anchor not in anchors(file):
                broken.append(f'{page.relative_to(ROOT)}: {target} (no heading #{anchor})')
    assert not broken, broken
    assert count >= 20


def test_readme_and_index_link_every_page() -> None:
    readme, index = prose(ROOT / 'README.md'), prose(ROOT / 'docs' / 'index.md')
    for page in sorted((ROOT / 'docs').glob('*.md')):
        assert f'](docs/{page.name}' in readme, f'README.md does not link docs/{page.name}'
        if page.name != 'index.md':
            assert f']({page.name}' in index, f'docs/index.md does not link {page.name}'


def test_anchor_rules() -> None:
    page = ROOT / 'docs' / 'algorithms.md'
    assert 'composers-algorithms-on-our-models-and-data' in anchors(page)
    assert 'progressive-learning-efficientnetv2s-progressive-learning-with-adaptive-regularization' in anchors(page)
