"""The package structure: the readers of finished runs load no torch, and utils/ has no import cycles."""
import ast
import json
import subprocess
import sys

from synthetic_project import ENV, REPO

READERS = ["utils.reporting.profile", "utils.reporting.radar", "utils.reporting.report", "utils.reporting.cli",
           "utils.reporting.trust_figures", "utils.runs.stages", "utils.runs.paths", "utils.runs.identity"]
READER_SCRIPTS = ["trustworthy/plot_spider.py", "trustworthy/report.py", "scripts/corpus_folds.py"]
HEAVY_PACKAGES = ("torch", "torchaudio", "transformers", "model")
HEAVY_MODULES = ("utils.training", "utils.features")


def test_trust_profile_and_report_load_no_torch():
    """Imported in a fresh interpreter: neither torch nor the training, feature or model code comes with them."""
    code = f"""
import importlib, importlib.util, json, sys
sys.path.insert(0, {str(REPO)!r})
for name in {READERS!r}:
    importlib.import_module(name)
for i, script in enumerate({READER_SCRIPTS!r}):
    spec = importlib.util.spec_from_file_location(f"script{{i}}", {str(REPO)!r} + "/" + script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "utils.reporting.report" in loaded and "matplotlib" in loaded         # the check sees what loads
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY_PACKAGES or m.startswith(HEAVY_MODULES)]
    assert heavy == []


def import_graph(package: str = "utils") -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports, at the top or inside functions."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != package} - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_utils_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert "utils.runs.stages" in graph["utils.training.pipeline"]                 # the graph sees imports,
    assert "utils.core.errors" in graph["utils.runs.cli"]                          # function-local ones too
    assert cycles(graph) == []
