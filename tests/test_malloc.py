"""fntrain.malloc: glibc tuned only where JAX runs on XLA:CPU, decided without starting a backend."""

import os
import subprocess
import sys

import pytest

from fntrain import malloc


@pytest.fixture
def no_backend_yet(monkeypatch):
    """The test process has started JAX's CPU backend; decide as a fresh process would."""
    monkeypatch.setattr(malloc, "_initialised_backend", lambda: None)
    monkeypatch.setattr(malloc, "_requested_platforms", lambda: os.environ.get("JAX_PLATFORMS", ""))
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)


def test_an_initialised_backend_decides(monkeypatch):
    monkeypatch.setattr(malloc, "_initialised_backend", lambda: "gpu")
    assert malloc.on_xla_cpu() == (False, "JAX's default backend is gpu")


@pytest.mark.parametrize("platforms,on_cpu", [("cpu", True), ("cuda", False), ("cuda,cpu", False), ("cpu,tpu", True)])
def test_jax_platforms_decides_by_its_first_platform(no_backend_yet, monkeypatch, platforms, on_cpu):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(malloc, "_accelerator_plugins", lambda: ["jax_cuda12_plugin"])  # not consulted
    assert malloc.on_xla_cpu() == (on_cpu, f"JAX_PLATFORMS={platforms}")


def test_an_accelerator_plugin_counts_only_with_its_device(no_backend_yet, monkeypatch, tmp_path):
    plugin = tmp_path / "jax_plugins" / "xla_cuda12"  # a path-based plugin, as JAX discovers them
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("raise AssertionError('fntrain must not import plugins')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(malloc._DEVICE_NODES, "cuda", str(tmp_path / "no-such-device"))
    assert malloc.on_xla_cpu() == (True, "jax_plugins.xla_cuda12 installed but no device found")
    monkeypatch.setitem(malloc._DEVICE_NODES, "cuda", str(plugin / "__init__.py"))  # a device node that exists
    assert malloc.on_xla_cpu() == (False, "accelerator plugin jax_plugins.xla_cuda12 installed")


def test_no_plugin_means_xla_cpu(no_backend_yet, monkeypatch):
    monkeypatch.setattr(malloc, "_accelerator_plugins", lambda: [])
    assert malloc.on_xla_cpu() == (True, "no accelerator plugin installed")


def test_an_unknown_mode_is_refused_before_anything_changes():
    before = malloc.status
    with pytest.raises(ValueError, match="'tuned' applies"):
        malloc.tune("on")
    assert malloc.status == before


def status_in_fresh_process(env: dict[str, str], code: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("FNTRAIN_MALLOC", "JAX_PLATFORMS", "GLIBC_TUNABLES")} | env
    script = f"import fntrain\n{code}\nprint(fntrain.malloc.status)"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(malloc._glibc() is None or malloc._preloaded_allocator(), reason="needs glibc malloc")
@pytest.mark.parametrize(
    "env,code,expected",
    [
        # JAX_PLATFORMS=cuda on a machine without a GPU: import fntrain must not start a backend.
        ({"JAX_PLATFORMS": "cuda"}, "", "glibc malloc, defaults: JAX_PLATFORMS=cuda, not XLA:CPU"),
        ({"JAX_PLATFORMS": "cpu"}, "", "glibc malloc, tuned by fntrain: JAX will run on XLA:CPU (JAX_PLATFORMS=cpu)"),
        ({"FNTRAIN_MALLOC": "system", "JAX_PLATFORMS": "cpu"}, "", "glibc malloc, defaults: FNTRAIN_MALLOC=system"),
        ({"FNTRAIN_MALLOC": "tuned", "JAX_PLATFORMS": "cuda"}, "", "glibc malloc, tuned by fntrain: FNTRAIN_MALLOC=tuned"),
        ({"JAX_PLATFORMS": "cpu"}, "fntrain.malloc.tune('system')", "glibc malloc, default values restored: tune('system')"),
        # hugetlb: glibc's defaults, the heap on huge pages only if glibc was told at start-up.
        ({"FNTRAIN_MALLOC": "hugetlb", "JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "",
         "glibc malloc, defaults: FNTRAIN_MALLOC=hugetlb; heap on transparent huge pages (glibc.malloc.hugetlb=1 in GLIBC_TUNABLES)"),
        ({"FNTRAIN_MALLOC": "hugetlb", "JAX_PLATFORMS": "cpu"}, "",
         "glibc malloc, defaults: FNTRAIN_MALLOC=hugetlb; but glibc.malloc.hugetlb=1 was not in GLIBC_TUNABLES when the "
         "process started (fntrain train sets it)"),
    ],
)
def test_import_decides_and_says_why(env, code, expected):
    assert status_in_fresh_process(env, code).startswith(expected)
