"""The house rules that keep the code easy to change, checked on every run: modules readable in one
sitting, no long functions, no formatter opt-outs, nothing cited outside the repository, and the
spec modules light enough to load without the servers and frameworks they configure."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stf_model", "pipelines")
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 80


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    suffixes = {".py", ".md", ".yaml", ".yml", ".toml", ".jinja", ".txt", ""}
    return [ROOT / p for p in listed if Path(p).suffix in suffixes and (ROOT / p).is_file()]


def test_modules_stay_readable_in_one_sitting():
    long = {
        str(p.relative_to(ROOT)): n
        for p in python_files(*PACKAGES)
        if (n := len(p.read_text().splitlines())) >= MAX_MODULE_LINES
    }
    assert not long, f"modules of {MAX_MODULE_LINES}+ lines (split along their seams): {long}"


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in python_files(*PACKAGES, "tests", "examples", "docs"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(module: str, node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """Our modules an import statement names (``from a import b`` names ``a.b`` when that is a
    module, else ``a``; a package's ``__init__`` running first is not counted); relative imports
    resolved."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if module in PACKAGE_MODULES else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        names = {
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        }
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


PACKAGE_MODULES: set[str] = set()


def test_no_import_cycles():
    """No module imports, at any depth and from anywhere in it (a function's lazy import
    included), a module that imports it back: a cycle works only by the order of imports."""
    paths = {_module_name(p): p for p in python_files(*PACKAGES)}
    PACKAGE_MODULES.update(m for m, p in paths.items() if p.name == "__init__.py")
    graph = {}
    for module, path in paths.items():
        nodes = [
            n
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Import | ast.ImportFrom)
        ]
        graph[module] = {t for n in nodes for t in _imported(module, n, set(paths))} - {module}
    cycles = []
    for start in graph:
        # A path back to start through modules named after it (each cycle is reported once, from
        # its smallest name).
        stack, seen = [(start, [start])], set()
        while stack:
            module, trail = stack.pop()
            for target in graph[module]:
                if target == start:
                    cycles.append(" -> ".join([*trail, start]))
                elif target > start and target not in seen:
                    seen.add(target)
                    stack.append((target, [*trail, target]))
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_no_formatter_opt_outs():
    opt_out = re.compile(r"#\s*fmt:\s*(skip|off)")
    found = [
        str(p.relative_to(ROOT))
        for p in tracked_text_files()
        if p.suffix == ".py" and p != Path(__file__) and opt_out.search(p.read_text())
    ]
    assert not found, f"formatter opt-outs in {found}"


def test_nothing_outside_the_repository_is_cited():
    outside = re.compile(r"\.\./shared|\bDESIGN\b|STACK-NOTES|CONVENTIONS\.md")
    found = [
        str(p.relative_to(ROOT))
        for p in tracked_text_files()
        if p != Path(__file__) and outside.search(p.read_text(errors="replace"))
    ]
    assert not found, f"references to files outside the repository in {found}"


def loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    code += (
        f"import json, sys\nprint(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "job,forbidden",
    [
        ("serve", ("fastapi", "ray.serve", "torch", "transformers")),
        ("train", ("ray.train", "deepspeed", "torch", "transformers")),
        ("preprocess", ("ray.data", "torch", "transformers")),
        ("infer", ("ray.data", "torch", "transformers")),
        ("eval", ("ray", "torch", "transformers", "PIL", "pandas")),
        ("eval-suite", ("ray", "torch", "transformers", "PIL", "pandas")),
        ("init", ("ray", "torch", "transformers")),
        ("synth", ("ray", "torch", "transformers", "PIL")),
        ("convert", ("ray", "torch", "transformers")),
    ],
)
def test_loading_a_spec_imports_no_framework(job, forbidden):
    """A spec loads (class and a validated instance) without what the job itself needs."""
    example = {
        "serve": "model: {path: /m}",
        "train": "name: r\nstorage_path: /r\nstage: finetune\ndata: [/d]\ninit_from: /m",
        "preprocess": "inputs: [/a.json]\noutput: /o\nmodel: /m",
        "infer": "model: {path: /m}\ninputs: [/i]\noutput: /o",
        "eval": "benchmark: pope\nmodel: {path: /m}\nquestions: /q\nannotations: /c\noutput: /o",
        "eval-suite": "models: [{path: /m}]\nbenchmarks: {mme: {annotations: /a}}\noutput: /o",
        "init": "llm: /l\nvision_tower: /t\noutput: /o",
        "synth": "output: /o",
        "convert": "source: /s\noutput: /o",
    }[job]
    code = (
        "import yaml\n"
        "from pipelines.jobs import spec_class\n"
        f"spec_class({job!r}).model_validate(yaml.safe_load({example!r}))\n"
    )
    loaded = loaded_after(code, forbidden)
    assert loaded == [], f"loading the {job} spec imported {loaded}"


def test_every_job_is_a_package_of_a_spec_and_the_module_that_runs_it():
    """`pipelines/JOB/spec.py` (the pydantic spec) and `pipelines/JOB/job.py` (``run`` and
    ``summary_line``); eval-suite is the eval package's second job, run by its `suite` module."""
    import importlib

    from pipelines.jobs import JOBS

    for name, job in JOBS.items():
        module, _ = job.spec.split(":")
        package = module.rsplit(".", 1)[0]
        assert module == f"{package}.spec", name
        assert job.runner == f"{package}.{'suite' if name == 'eval-suite' else 'job'}", name
        runner = importlib.import_module(job.runner)
        assert callable(runner.run) and callable(runner.summary_line), name
    packages = [p for p in (ROOT / "pipelines").iterdir() if (p / "__init__.py").exists()]
    for package in packages:
        assert "__getattr__" not in (package / "__init__.py").read_text(), package.name


@pytest.mark.parametrize(
    "module",
    [
        "pipelines.infer.job",  # the `stf infer` driver: only its replicas need the model
        "pipelines.preprocess.processor",  # what every preprocessing actor imports
    ],
)
def test_drivers_and_preprocessing_actors_import_no_torch(module):
    """torch and transformers' modeling cost about 2 s per process; only processes that hold a
    model may pay that."""
    loaded = loaded_after(f"import {module}\n", ("torch", "transformers.modeling_utils"))
    assert loaded == [], f"importing {module} imported {loaded}"


def test_the_model_library_imports_no_ray_deepspeed_or_pipelines():
    """Every module of ``stf_model``, imported: the library stands alone (transformers may still
    import DeepSpeed by itself when it loads a model, outside our modules)."""
    modules = sorted(
        f"stf_model.{p.stem}" for p in (ROOT / "stf_model").glob("*.py") if p.stem != "__init__"
    )
    code = "".join(f"import {m}\n" for m in modules)
    loaded = loaded_after(code, ("ray", "deepspeed", "pipelines"))
    assert loaded == [], f"importing the model library imported {loaded}"
