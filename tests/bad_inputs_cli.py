"""The command line as people type it (issue 22, topic 'cli'): options between the positionals are read, so a
mistyped one is named alone (with the closest known option), and a missing recipe is named without the overrides;
rows of tests/bad_inputs.py's TABLE (exit status 2, one usage line and one message, nothing written)."""

from __future__ import annotations

from tests.bad_inputs import RUN, cli, write_recipe

ROWS = [
    cli('train with a mistyped option between the recipe and its overrides',
        lambda tmp: ['train', write_recipe(tmp, RUN), '--degub', 'max_duration=1ba'],
        r'unrecognized arguments: --degub \(did you mean --debug\?\)$'),
    cli('predict with a mistyped option between images',
        lambda tmp: ['predict', write_recipe(tmp, RUN), 'a.jpg', '--tpo', '3', 'b.jpg'],
        r'unrecognized arguments: --tpo \(did you mean --top\?\)$'),
    cli('eval with an option but no recipe', lambda tmp: ['eval', '--json', 'e.json'],
        r'the following arguments are required: recipe$'),
    cli('export with an unknown format between the recipe and its overrides',
        lambda tmp: ['export', write_recipe(tmp, RUN), '--format', 'tflite', 'run_name=x'],
        r"argument --format: invalid choice: 'tflite'"),
    cli('benchmark with a mistyped option', lambda tmp: ['benchmark', '--stpes', '2'],
        r'unrecognized arguments: --stpes \(did you mean --steps\?\)$'),
]
