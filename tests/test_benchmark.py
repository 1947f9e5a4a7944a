"""The benchmark runs end to end on the CPU at a tiny size, and its rows, ratios and JSON agree."""

import importlib.util
import json
import statistics

import pytest
import torch

from composer_efficientnet import benchmark
from composer_efficientnet.benchmark import Row, Settings, WindowTimer, add_ratios

TINY = ['--device', 'cpu', '--resolution', '32', '--batch-size', '2', '--warmup', '1', '--steps', '2',
        '--windows', '2', '--no-compile']
HAVE_TIMM = importlib.util.find_spec('timm') is not None


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a 2-core machine shared with other test runs can stall for seconds per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_cpu_run_reports_every_row(tmp_path, one_thread, capsys):
    path = tmp_path / 'bench.json'
    rows = 'ours,ours-composer,ours-loop,torchvision,timm'
    assert benchmark.main(TINY + ['--rows', rows, '--json', str(path)]) == 0
    result = json.loads(path.read_text())

    expected = ['ours:eager', 'ours-composer:eager', 'ours-loop:eager', 'torchvision:eager'] + (
        ['timm:eager'] if HAVE_TIMM else [])
    assert [row['name'] for row in result['rows']] == expected
    assert result['complete'] and result['skipped'] == ({} if HAVE_TIMM else {'timm': 'not installed'})
    for row in result['rows']:
        assert row['error'] is None
        assert len(row['window_images_per_s']) == 2 and min(row['window_images_per_s']) > 0
        assert row['images_per_s'] == pytest.approx(statistics.median(row['window_images_per_s']))
        assert row['peak_memory_gib'] is None and row['memory_ratio'] is None  # no CUDA memory on the CPU
    peers = [row for row in result['rows'] if row['impl'] in ('torchvision', 'timm')]
    best = max(peers, key=lambda row: row['images_per_s'])
    for row in result['rows']:
        assert row['reference'] == best['name']
        assert row['ratio'] == pytest.approx(row['images_per_s'] / best['images_per_s'])
    assert best['ratio'] == pytest.approx(1.0)
    reads = {row['impl']: row['host_reads_per_step'] for row in result['rows']}
    assert reads['ours'] == 0 and reads['ours-composer'] >= 6  # Composer's loop reads the loss, sizes, flags
    assert reads['ours-loop'] is None and reads['torchvision'] is None

    assert result['sync_check'] == dict.fromkeys(['model_step', 'train_metric_update', 'trainer_loop'],
                                                 'skipped: needs CUDA')
    settings = result['settings']
    assert (settings['batch_size'], settings['resolution'], settings['precision']) == (2, 32, 'fp32')
    assert settings['modes'] == ['eager'] and settings['label_smoothing'] == 0.1 and settings['drop_rate'] == 0.2
    assert {'torch', 'composer', 'timm'} <= set(result['versions']) and result['device'] and result['date']

    printed = capsys.readouterr().out
    assert all(row['description'] in printed for row in result['rows'])
    assert benchmark.main(['--report', str(path)]) == 0
    assert benchmark.format_table(result) in capsys.readouterr().out


def test_ratios_compare_each_mode_to_its_fastest_peer():
    rows = [Row('ours', 'eager', images_per_s=120.0, peak_memory_gib=8.0),
            Row('torchvision', 'eager', images_per_s=100.0, peak_memory_gib=10.0),
            Row('timm', 'eager', images_per_s=80.0, peak_memory_gib=9.0),
            Row('ours', 'compiled', images_per_s=150.0, peak_memory_gib=5.0),
            Row('torchvision', 'compiled', error='RuntimeError: boom'),
            Row('timm', 'compiled', images_per_s=200.0, peak_memory_gib=6.0)]
    add_ratios(rows)
    ratios = {row.name: (row.ratio, row.memory_ratio, row.reference) for row in rows}
    assert ratios['ours:eager'] == (pytest.approx(1.2), pytest.approx(0.8), 'torchvision:eager')
    assert ratios['timm:eager'] == (pytest.approx(0.8), pytest.approx(0.9), 'torchvision:eager')
    assert ratios['ours:compiled'] == (pytest.approx(0.75), pytest.approx(5 / 6), 'timm:compiled')
    assert ratios['torchvision:compiled'] == (None, None, None)


def test_ratios_need_a_peer_row():
    rows = [Row('ours', 'eager', images_per_s=120.0)]
    add_ratios(rows)
    assert rows[0].ratio is None and rows[0].reference is None


def _settings(**overrides) -> Settings:
    values = dict(model='efficientnet_b0', device='cpu', batch_size=2, resolution=32, precision='fp32',
                  channels_last=False, warmup=2, steps=3, windows=2, compile=False, rows=('ours',))
    return Settings(**{**values, **overrides})


def test_window_timer_skips_warmup_and_times_each_window():
    settings = _settings()
    timer = WindowTimer(settings, torch.device('cpu'))
    for _ in range(settings.total_steps - 1):
        timer.step_end()
    with pytest.raises(RuntimeError, match='Timed 7 steps, expected 8'):
        timer.window_seconds()
    timer.step_end()
    seconds = timer.window_seconds()
    assert len(seconds) == 2 and all(s >= 0 for s in seconds)


@pytest.mark.parametrize('argv', [['--precision', 'bf16'], ['--rows', 'ours,keras'], ['--model', 'efficientnet_b9'],
                                  ['--steps', '0']])
def test_bad_arguments_are_rejected(argv):
    with pytest.raises(SystemExit):
        benchmark.main(['--device', 'cpu'] + argv)


def test_defaults_follow_the_device():
    parser = benchmark.build_parser()
    cpu = benchmark.settings_from_args(parser.parse_args(['--device', 'cpu', '--model', 'efficientnet-b4']), parser)
    assert (cpu.model, cpu.batch_size, cpu.resolution, cpu.precision, cpu.modes) == (
        'efficientnet_b4', 8, 128, 'fp32', ('eager',))
    assert cpu.rows == ('ours', 'torchvision', 'timm') and not cpu.cudnn_benchmark
    assert benchmark.DEVICE_DEFAULTS['cuda']['cudnn_benchmark'] is True  # as our recipes run on a GPU


def test_trainer_loop_check_arms_whole_steps_after_warmup(monkeypatch, one_thread):
    """On CUDA the check runs these steps with sync errors on; here the switch itself is checked."""
    modes = []
    monkeypatch.setattr(torch.cuda, 'set_sync_debug_mode', modes.append)
    settings = _settings(resolution=32, batch_size=2, warmup=2, steps=2, windows=1)
    benchmark.run_trainer('ours', 'eager', settings, torch.device('cpu'), [benchmark._SyncErrorSteps(2, 4)])
    assert modes == [0, 0, 'error', 'error'] + [0] * benchmark.READ_COUNT_STEPS

