"""A config's ``module.path:function``: imported from the config's folder, safely, failing in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_contract import assert_one_error_line, assert_refused_within_bounds, run_worker
from fntrain import config as cfg
from fntrain.errors import ConfigError
from fntrain.imports import import_function

BASE = {
    "seed": 0,
    "output_dir": "out",
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden_sizes": [8]},
    "loop": {"kind": "steps", "num_steps": 2},
    "log": {"progress": "none"},
}
TINY_NET = (
    "import fntrain\n\ndef build(num_outputs):\n"
    "    return fntrain.nn.serial(fntrain.nn.flatten, fntrain.nn.dense(num_outputs))\n"
)


def write_config(path: Path, **sections) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**BASE, **sections}, sort_keys=False))
    return path


@pytest.fixture
def clean_imports(monkeypatch):
    """sys.path and sys.modules as they were, after a test that imports modules of its tmp_path."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0].startswith("u_"):
            del sys.modules[name]


def test_a_module_that_fails_to_import_is_one_line_naming_key_module_and_error(tmp_path):
    """Raises, syntax error, sys.exit, missing dependency, relative or malformed name, in any section."""
    modules = {
        "u_raises": "raise RuntimeError('kaboom\\nsecond line')\n",
        "u_syntax": "def build(:\n",
        "u_exits": "import sys\nsys.exit(7)\n",
        "u_exits_text": "raise SystemExit('bye')\n",
        "u_needy": "import u_no_such_dependency\n",
        "u_plain": "value = 3\n",
    }
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    cases = [
        ({"model": {"name": "u_raises:build"}}, ("model.name", "'u_raises'", "RuntimeError: kaboom", "u_raises.py:1")),
        ({"model": {"name": "u_syntax:build"}}, ("model.name", "'u_syntax'", "SyntaxError", "line 1")),
        ({"data": {"name": "u_exits:load"}}, ("data.name", "'u_exits'", "sys.exit(7)")),
        ({"loss": {"name": "u_exits_text:fn"}}, ("loss.name", "'u_exits_text'", "sys.exit('bye')")),
        ({"objective": {"name": "u_needy:fn"}, "loss": None}, ("objective.name", "'u_needy'", "'u_no_such_dependency'")),
        ({"callbacks": [{"name": "u_raises:cb"}]}, ("callbacks[0].name", "'u_raises'", "kaboom")),
        ({"metrics": ["accuracy", "u_syntax:m"]}, ("metrics[1]", "'u_syntax'", "SyntaxError")),
        ({"model": {"name": "..evil:build"}}, ("model.name", "relative")),
        ({"model": {"name": "u_plain:"}}, ("model.name", "not a function name")),
        ({"model": {"name": "u-plain:build"}}, ("model.name", "not a module path")),
        ({"model": {"name": "u_plain:value"}}, ("model.name", "not callable")),
        ({"model": {"name": "u_plain:nothing"}}, ("model.name", "no attribute 'nothing'", "u_plain.py")),
        ({"model": {"name": "u_nowhere:build"}}, ("model.name", "no module 'u_nowhere'", str(tmp_path))),
    ]
    for i, (sections, _) in enumerate(cases):
        write_config(tmp_path / f"c{i}.yaml", **sections)
    run = run_worker([{"argv": ["train", f"c{i}.yaml"], "cwd": tmp_path} for i in range(len(cases))], tmp_path)
    lines = assert_refused_within_bounds(run, [(f"c{i}.yaml", *needles) for i, (_, needles) in enumerate(cases)])
    assert "second line" not in lines[0]  # the first line of the error only
    assert not (tmp_path / "out").exists()


def test_keyboard_interrupt_at_import_stays_an_interrupt(tmp_path, clean_imports):
    (tmp_path / "u_interrupts.py").write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        import_function("u_interrupts:fn", str(tmp_path))
    write_config(tmp_path / "c.yaml", model={"name": "u_interrupts:build"})
    run = run_worker([{"argv": ["train", "c.yaml"], "cwd": tmp_path}], tmp_path)
    (result,) = run.results
    assert result["rc"] == 130 and result["stderr"] == "error: interrupted\n", result


def test_a_stdlib_name_in_the_working_directory_shadows_nothing(tmp_path):
    """A `queue.py` (or any module) in the working directory is not on the import path of a run."""
    (tmp_path / "queue.py").write_text("raise RuntimeError('the standard library queue was shadowed')\n")
    write_config(tmp_path / "c.yaml")
    script = Path(sys.executable).parent / "fntrain"
    command = [str(script)] if script.exists() else [sys.executable, "-P", "-m", "fntrain"]
    result = subprocess.run([*command, "train", "c.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "summary.json").exists()


def test_a_module_beside_the_config_named_like_the_stdlib_is_refused(tmp_path, clean_imports):
    (tmp_path / "queue.py").write_text("def build():\n    pass\n")
    with pytest.raises(ConfigError, match=r"the module 'queue' beside the config .*queue\.py.* imports instead; rename"):
        cfg.load_config(write_config(tmp_path / "c.yaml", model={"name": "queue:build"}))
    import queue

    assert queue.__file__ != str(tmp_path / "queue.py")


def test_packages_siblings_and_repeated_loads(tmp_path, clean_imports, monkeypatch):
    """`pkg.mod:fn` beside the config, a module importing its sibling, a second load; the folder goes last."""
    (tmp_path / "u_pkg").mkdir()
    (tmp_path / "u_pkg" / "__init__.py").write_text("")
    (tmp_path / "u_pkg" / "models.py").write_text(TINY_NET)
    (tmp_path / "u_helper.py").write_text("WIDTH = 5\n")
    (tmp_path / "u_data.py").write_text(
        "import numpy as np\nimport u_helper\n\ndef load():\n"
        "    return np.ones((10, u_helper.WIDTH), np.float32), np.arange(10) % 2\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write_config(tmp_path / "c.yaml", model={"name": "u_pkg.models:build"}, data={"name": "u_data:load"})
    config = cfg.load_config(path)
    assert config.model.module_dir == config.data.module_dir == str(tmp_path)
    assert config.model.function().__module__ == "u_pkg.models"
    assert config.data.function()()[0].shape == (10, 5)
    assert sys.path[-1] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1
    assert cfg.load_config(path) == config  # imported already: the same module, no second entry
    assert sys.path.count(str(tmp_path)) == 1


def test_an_installed_module_needs_no_folder(tmp_path, clean_imports):
    """fntrain.nn:mlp resolves to the installed package whatever module_dir says, even a missing one."""
    assert import_function("fntrain.nn:mlp", str(tmp_path / "missing")).__module__.startswith("fntrain.nn")
    config = cfg.load_config(write_config(tmp_path / "c.yaml", model={"name": "fntrain.nn:mlp"}))
    assert config.model.function().__name__ == "mlp"


def test_a_name_given_as_an_override_is_imported_from_the_working_directory(tmp_path, clean_imports, monkeypatch, capsys):
    from fntrain import cli

    here = tmp_path / "here"
    here.mkdir()
    (here / "u_override_net.py").write_text(TINY_NET)
    path = write_config(tmp_path / "configs" / "c.yaml")
    monkeypatch.chdir(here)
    # The name in the file is looked for beside the file, where it is not ...
    path_named = write_config(tmp_path / "configs" / "named.yaml", model={"name": "u_override_net:build"})
    assert_one_error_line(cli.main(["train", str(path_named)]), capsys.readouterr().err,
                          ("model.name", "no module 'u_override_net'", str(tmp_path / "configs")))
    # ... and the same name given as an override in the working directory, as a key or a section.
    config = cfg.load_config(path_named, ["model.name=u_override_net:build"])
    assert config.model.module_dir == str(here)
    assert config.model.function().__module__ == "u_override_net"
    assert cfg.load_config(path, ["model={name: u_override_net:build}"]) == config


def test_a_warning_while_loading_joins_the_message(tmp_path, clean_imports, capsys, monkeypatch):
    """Into the one error line when loading fails; one `warning:` line, no source path, when it succeeds."""
    from fntrain import cli

    (tmp_path / "u_warns.py").write_text("import warnings\nwarnings.warn('old api')\nraise ValueError('broken')\n")
    (tmp_path / "u_warns_ok.py").write_text("import warnings\nwarnings.warn('old api, still fine')\n" + TINY_NET)
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "bad.yaml", model={"name": "u_warns:build"})
    line = assert_one_error_line(cli.main(["train", "bad.yaml"]), capsys.readouterr().err,
                                 ("model.name", "ValueError: broken", "warned while loading: UserWarning: old api"))
    assert "u_warns.py:2" not in line
    write_config(tmp_path / "ok.yaml", model={"name": "u_warns_ok:build"})
    assert cli.main(["train", "ok.yaml", "--print-config"]) == 0
    assert capsys.readouterr().err == "warning: UserWarning: old api, still fine\n"
