"""The layer rule: wan_core never imports ComfyUI or nodes, and the pack loads as ComfyUI loads it."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
BANNED = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "node_helpers", "nodes",
          "latent_preview", "execution"}


def _imported_roots(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            if isinstance(node.args[0], ast.Constant):
                roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_no_wan_core_file_imports_comfyui_or_nodes():
    files = sorted((ROOT / "wan_core").rglob("*.py"))
    assert files, "wan_core has no Python files"
    offenders = {str(f.relative_to(ROOT)): sorted(_imported_roots(f) & BANNED) for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_wan_core_imports_where_no_comfyui_module_can_exist():
    """Every banned module name is made unimportable; importing the whole engine must still work."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BANNED = {sorted(BANNED)!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BANNED:
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import pkgutil, importlib, wan_core
        for info in pkgutil.walk_packages(wan_core.__path__, "wan_core."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BANNED)
        assert not loaded, loaded
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_pack_loads_by_file_location_under_another_name():
    """ComfyUI imports custom_nodes/<folder>/__init__.py as a package named after the folder."""
    spec = importlib.util.spec_from_file_location("some_unrelated_folder_name", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert isinstance(module.NODE_CLASS_MAPPINGS, dict)
        assert isinstance(module.NODE_DISPLAY_NAME_MAPPINGS, dict)
        assert "nodes" not in sys.modules or getattr(sys.modules["nodes"], "__file__", "") != str(
            ROOT / "nodes" / "__init__.py"), "our nodes/ package was imported as top-level `nodes`"
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == spec.name]:
            del sys.modules[name]


def test_only_wan_core_is_installable():
    """The packages setuptools would install, from pyproject's own find rule, are wan_core's only."""
    import tomllib
    from setuptools import find_packages

    rule = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = find_packages(str(ROOT), **rule)
    assert "wan_core" in found
    assert all(p == "wan_core" or p.startswith("wan_core.") for p in found), found


# What each stage of wan_core may import from the package (besides itself, constants, errors, files).
LAYERS = {
    "runtime": set(),
    "video": set(),
    "latents": set(),
    "models": {"runtime"},
    "parallel": {"runtime"},  # torch.distributed groups, the sequence-parallel runner, the CFG-parallel denoiser
    "loading": {"models", "runtime"},
    "sampling": {"runtime", "latents", "parallel"},
    "conditioning": {"models", "sampling", "runtime", "latents"},
    "i2v": {"conditioning", "models", "sampling", "runtime", "latents"},
    "lora": {"loading", "models", "runtime"},
    "vace": {"i2v", "conditioning", "models", "sampling", "runtime", "latents"},
    "host": {"runtime"},
    "stages": {"host", "conditioning", "models", "runtime", "sampling", "latents", "parallel"},
    "job": {"host", "conditioning", "vace", "i2v", "models", "runtime", "sampling", "latents", "parallel"},
    "pool": {"job", "host", "lora", "loading", "conditioning", "vace", "models", "runtime", "sampling", "parallel"},
}


def _stage(module: str) -> str:
    """``wan_core.models.dit`` -> ``models``; ``wan_core.i2v`` -> ``i2v``; ``wan_core`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _wan_core_imports(path: pathlib.Path) -> set[str]:
    """Absolute names of the wan_core modules ``path`` imports relatively."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            found.add(".".join(base + ([node.module] if node.module else [])))
    return found


def test_each_stage_of_wan_core_imports_only_the_stages_below_it():
    offenders = {}
    for path in sorted((ROOT / "wan_core").rglob("*.py")):
        stage = _stage(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if stage not in LAYERS:
            continue
        allowed = LAYERS[stage] | {stage, "constants", "errors", "files"}
        bad = sorted(m for m in _wan_core_imports(path) if _stage(m) not in allowed)
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}
