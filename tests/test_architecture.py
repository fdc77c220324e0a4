"""The package's layout holds: imports run one way between its rooms, no module imports itself back
through others, modules and functions stay small, and every top-level definition is used somewhere.
ARCHITECTURE.md draws the same picture in words."""

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "starbucks_jax"
# Rooms from the bottom up; a room may import from rooms below it only (and from itself).
LAYERS = (
    ("errors",),
    ("storage",),  # local paths and bucket URLs, below everything that reads or writes a file
    ("config_blocks",),
    ("data", "model"),
    ("hf", "pairs"),
    ("losses", "runtime"),
    ("inference",),
    ("evaluation",),
    ("training", "mining"),
    ("cli",),
    ("train", "evaluate", "encode", "export", "mine", "check", "index"),  # the `python -m starbucks_jax.<command>` entry points
)
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
  """{"starbucks_jax.model.bert": path} for every module of the package."""
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(REPO).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def imports(path: Path) -> list[tuple[str, int]]:
  """(imported starbucks_jax module, line) for every import of the file, lazy ones inside functions too."""
  found = []
  known = modules()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("starbucks_jax")]
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("starbucks_jax"):
      for alias in node.names:  # `from starbucks_jax.model import bert` imports the module model.bert
        child = f"{node.module}.{alias.name}"
        found.append((child if child in known else node.module, node.lineno))
  return found


def room(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "starbucks_jax"


def test_every_module_is_in_a_room():
  rooms = {room(m) for m in modules()} - {"starbucks_jax"}
  assert rooms <= set(RANK), f"modules outside the layers of this test: {sorted(rooms - set(RANK))}"


def test_imports_run_one_way():
  wrong = []
  for module, path in modules().items():
    if module == "starbucks_jax":
      continue
    for target, line in imports(path):
      if target == "starbucks_jax" or room(target) == room(module):
        continue
      if RANK[room(target)] >= RANK[room(module)]:
        wrong.append(f"{path.relative_to(REPO)}:{line} imports {target} ({room(module)} -> {room(target)})")
  assert not wrong, "imports that run up or sideways:\n" + "\n".join(wrong)


def test_no_import_cycles():
  graph = {m: {t for t, _ in imports(p) if t in modules() and t != m} for m, p in modules().items()}
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_modules_and_functions_stay_small():
  """A function may be longer only when its docstring says why ("Long because ...")."""
  big = []
  for path in modules().values():
    source = path.read_text()
    if source.count("\n") > MAX_MODULE_LINES:
      big.append(f"{path.relative_to(REPO)}: {source.count(chr(10))} lines")
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
          big.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
  assert not big, "over the size limits:\n" + "\n".join(big)


def test_every_top_level_definition_is_used_outside_the_tests():
  """No dead or test-only code: each module-level function and class of the package is named somewhere in
  the package, the configs or the benchmarks besides its own definition."""
  sources = [p.read_text() for p in list(PACKAGE.rglob("*.py")) + list((REPO / "configs").glob("*.py"))
             + list((REPO / "bench").glob("*.py"))]
  unused = []
  for path in modules().values():
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("__"):
        pattern = re.compile(rf"\b{re.escape(node.name)}\b")
        if sum(len(pattern.findall(text)) for text in sources) < 2:
          unused.append(f"{path.relative_to(REPO)}: {node.name}")
  assert not unused, "defined but used nowhere outside the tests:\n" + "\n".join(unused)


@pytest.mark.parametrize("command", ["train", "evaluate", "encode", "export"])
def test_commands_have_entry_points_and_console_scripts(command):
  """`python -m starbucks_jax.<command>` and `starbucks-<command>` both reach cli/<command>.py's run()."""
  shim = (PACKAGE / f"{command}.py").read_text()
  assert f"from starbucks_jax.cli.{command} import run" in shim
  setup = (REPO / "setup.py").read_text()
  assert f'"starbucks-{command}=starbucks_jax.cli.{command}:run"' in setup
