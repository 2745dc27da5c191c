"""Hostile input stays small: bounded files, YAML, messages; bad values refused before anything runs.

Each class of input runs through ``fntrain.cli.main`` in one fresh process whose address
space is capped (``cli_contract.run_worker``), so a case that reads or allocates without
bound fails the test instead of the machine; every case must keep the CLI's contract (exit
2, one ``error:`` line naming the file and the key) within ``cli_contract.CASE_SECONDS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from cli_contract import assert_refused_within_bounds, run_worker
from fntrain import limits
from fntrain.config import parse_yaml
from fntrain.errors import ConfigError

BASE = {
    "seed": 0,
    "output_dir": "out",
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden_sizes": [32]},
    "loop": {"kind": "steps", "num_steps": 2},
    "log": {"progress": "none"},
}


def base_text(**sections) -> str:
    return yaml.safe_dump({**BASE, **sections}, sort_keys=False)


def alias_bomb(levels: int = 9) -> str:
    """``a8``: 9 ** 9 integers through 80 short lines of anchors and aliases ("billion laughs")."""
    lines = ["bomb:", "  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_hostile_files_are_refused_small_and_fast(tmp_path):
    """Devices, FIFOs, big files, alias bombs, huge values and keys, many problems: one short line each."""
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "big.yaml").write_text(base_text() + "#" * (2 * limits.MAX_CONFIG_BYTES) + "\n")
    bomb = alias_bomb()
    (tmp_path / "bomb_typed.yaml").write_text(bomb + base_text().replace("hidden_sizes:\n  - 32", "hidden_sizes: *a8"))
    (tmp_path / "bomb_kwargs.yaml").write_text(bomb + base_text(model={"name": "fntrain.nn:mlp"}).replace(
        "name: fntrain.nn:mlp", "name: fntrain.nn:mlp\n  kwargs: {hidden_sizes: *a8}"))
    (tmp_path / "recursive.yaml").write_text(base_text() + "x: &x [1, *x]\n")
    (tmp_path / "long_value.yaml").write_text(base_text().replace("seed: 0", "seed: " + "a" * 900_000))
    (tmp_path / "long_key.yaml").write_text(base_text() + "? " + "k" * 900_000 + "\n: 1\n")  # `?`: past 1024 characters
    (tmp_path / "keys.yaml").write_text(base_text() + "".join(f"k{i}: 0\n" for i in range(20_000)))
    (tmp_path / "odd_key.yaml").write_text(base_text() + '"bad\\nkey\\u2028\\e[31m": 1\n')
    cases = [
        ("/dev/zero", (), ("/dev/zero", "not a regular file")),
        ("fifo.yaml", (), ("fifo.yaml", "not a regular file")),
        ("big.yaml", (), ("big.yaml", "larger than 1024 KiB")),
        ("bomb_typed.yaml", (), ("bomb_typed.yaml", "alias")),
        ("bomb_kwargs.yaml", (), ("bomb_kwargs.yaml", "alias")),
        ("recursive.yaml", (), ("recursive.yaml", "recursive")),
        ("long_value.yaml", (), ("long_value.yaml", "seed", "aaa...")),
        ("long_key.yaml", (), ("long_key.yaml", "kkk...", "unknown key")),
        ("keys.yaml", (), ("keys.yaml", "k0: unknown key", f"and {20_000 - limits.MAX_PROBLEMS} more")),
        ("odd_key.yaml", (), ("odd_key.yaml", "bad\\nkey\\u2028\\x1b[31m: unknown key")),
        ("recursive.yaml", ("seed=" + "x" * 100_000,), ("recursive.yaml",)),  # the file is refused first
        ("long_key.yaml", ("model.hidden_sizes=" + "[" * 1000,), ("model.hidden_sizes", "nested deeper than 64")),
        (str(tmp_path / "long_key.yaml"), ("seed=" + "x" * 100_000,), ("long_key.yaml", "seed", "'xxx", "...")),
    ]
    run = run_worker([{"argv": ["train", c, *args], "cwd": tmp_path} for c, args, _ in cases], tmp_path)
    lines = assert_refused_within_bounds(run, [needles for _, _, needles in cases])
    for line in lines:
        assert len(line) <= len("error: ") + limits.MAX_MESSAGE_CHARS, len(line)
    long_values = [line for (c, args, _), line in zip(cases, lines) if c.startswith("long_") or args]
    assert max(map(len, long_values)) < 500  # 900 kB values and keys, 100 kB overrides: quoted in 80 characters
    assert not (tmp_path / "out").exists()


def test_bad_values_are_refused_before_anything_runs(tmp_path):
    """Non-finite floats, floats for counts, counts past int32, a model past memory: one line naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text(base_text())
    cases = [
        ("optimizer.learning_rate=.inf", ("optimizer.learning_rate", "finite")),
        ("optimizer.clip_grad_norm=.nan", ("optimizer.clip_grad_norm", "finite")),
        ("loop.num_steps=1e20", ("loop.num_steps", "integer")),
        ("loop.num_steps=4294967296", ("loop.num_steps", "2147483647")),
        ("model.hidden_sizes=[1000000000]", ("model:", "model 'mlp'", "parameters", "TiB")),
        ("data.batch_size=2000000000", ("data.batch_size", "per batch")),
        ("optimizer.schedule={name: piecewise, boundaries: [1, 2], scales: [0.5]}", ("optimizer.schedule.scales",)),
        ("loss={name: mse, kwargs: {a: 1}}", ("loss.kwargs", "'mse'")),
        ("model={hidden_sizes: [8]}", ("model.name: required; one of mlp",)),
    ]
    run = run_worker([{"argv": ["train", "c.yaml", override], "cwd": tmp_path} for override, _ in cases], tmp_path)
    assert_refused_within_bounds(run, [("c.yaml", *needles) for _, needles in cases])
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the pieces


def test_quote_is_bounded_for_any_value():
    huge = [[[[1] * 9] * 9] * 9] * 9
    for value in ("a" * 10**7, 10**5000, huge, {"k" * 1000: huge}, b"\0" * 10**6, float("nan")):
        text = limits.quote(value)
        assert len(text) <= limits.MAX_QUOTED_CHARS
    assert limits.quote("short") == "'short'"
    assert limits.quote("a" * 200).endswith("...")


def test_one_line_escapes_every_line_break():
    text = limits.one_line("a\nb\rc\u2028d\x85e\x1bf")
    assert text.splitlines() == [text] and "\x1b" not in text
    assert len(limits.one_line("x" * 10**6)) == limits.MAX_MESSAGE_CHARS


def test_yaml_merge_keys_are_not_duplicates():
    parsed = parse_yaml("base: &b {x: 1, y: 2}\nmine: {<<: *b, x: 3}\n", "merge")
    assert parsed["mine"] == {"x": 3, "y": 2}


def test_yaml_limits_allow_what_configs_need():
    """Shared anchors below the expansion cap, nesting below the depth cap, long plain strings: read."""
    nested = "[" * (limits.MAX_YAML_DEPTH - 1) + "]" * (limits.MAX_YAML_DEPTH - 1)
    assert parse_yaml(f"x: {nested}", "deep") is not None
    widths = parse_yaml("w: &w [8, 8]\na: *w\nb: *w\n", "anchors")
    assert widths == {"w": [8, 8], "a": [8, 8], "b": [8, 8]}


def test_yaml_depth_through_aliases_is_capped():
    # 40 levels under `a`, 30 above its alias under `b`: each below the cap, 70 together.
    text = "a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n"
    try:
        parse_yaml(text, "deep-aliases")
    except ConfigError as e:
        assert "nested deeper than 64" in str(e)
    else:
        raise AssertionError("nesting through aliases passed the cap")


def test_the_shipped_configs_are_far_below_the_caps():
    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "configs").glob("*.yaml")):
        assert path.stat().st_size < limits.MAX_CONFIG_BYTES // 100
        parse_yaml(path.read_text(), str(path))
