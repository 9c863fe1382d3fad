"""The package layout: every import (module-level or inside a function) points down the
stage order, and `import arena` stays light."""
import ast
import subprocess
import sys
from pathlib import Path

import arena

STAGES = ["core", "data", "asr", "compress", "zoo", "plugins", "sandbox", "submissions", "score",
          "leaderboard", ("bench", "cli")]
RANK = {name: i for i, s in enumerate(STAGES) for name in (s if isinstance(s, tuple) else (s,))}
PACKAGE = Path(arena.__file__).parent


def stage_of(module: str) -> str | None:
    """'arena.score.plan' -> 'score'; the bare `arena` facade (version, plugin API) -> None."""
    parts = module.split(".")
    if parts[0] != "arena" or len(parts) == 1:
        return None
    return parts[1]


def project_imports(path: Path):
    """(line, imported module) for every import of the project in a file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "arena":  # `from arena import paths` names a submodule
                for alias in node.names:
                    yield node.lineno, f"arena.{alias.name}"
            else:
                yield node.lineno, node.module


def upward_imports() -> list[str]:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.parts[1] == "baselines":
            continue  # reference plugins: they use the public `arena` facade like any submission
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        own = stage_of(module)
        if own is None:
            continue  # arena/__init__.py: the facade re-exports the plugin API lazily
        for line, imported in project_imports(path):
            other = stage_of(imported)
            if other is None:
                continue
            if other not in RANK:
                offenders.append(f"{rel}:{line} imports {imported}: not a stage package")
            elif RANK[other] > RANK[own]:
                offenders.append(f"{rel}:{line} imports {imported} ({other} is above {own})")
    return offenders


def test_every_module_belongs_to_a_stage():
    strays = [p.name for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "cli")]
    assert strays == [], f"modules outside a stage package: {strays}"
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert not (PACKAGE / "baselines" / "__init__.py").exists()
    assert packages <= set(RANK), f"packages not in the stage order: {packages - set(RANK)}"


def test_no_import_points_up_the_stage_order():
    offenders = upward_imports()
    assert offenders == [], "imports that point up the stages:\n" + "\n".join(offenders)


def test_the_check_finds_an_upward_import(tmp_path):
    """The walker sees imports inside functions too (what hid the old cycles)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from arena.score import plan\n")
    assert [m for _, m in project_imports(src)] == ["arena.score"]


def test_import_arena_does_not_import_torch():
    code = "import sys, arena; arena.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_function_in_score_is_over_60_lines():
    long = []
    for path in sorted((PACKAGE / "score").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert long == [], long
