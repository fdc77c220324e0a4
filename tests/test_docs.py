"""The documentation: the site builds with `mkdocs build --strict`, the README stays one sitting long, and
every command the docs show names flags that exist (each `--flag` in its command's parser, each
`--config.a.b=` a field of the config it names)."""

import os
import re
import shlex
import subprocess
import sys

from tests.helpers import REPO

README_MAX_LINES = 250
COMMAND = re.compile(r"(?:python -m starbucks_jax\.|starbucks-)(train|evaluate|encode|export|mine|index)\b")
CODE_BLOCK = re.compile(r"```(?:bash|sh|shell|console|text)?\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`]*(?:python -m starbucks_jax\.|starbucks-)[^`]*)`")  # prose wraps inside one


def documented_files():
  return [REPO / "README.md", REPO / "tests" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def commands_in(text: str) -> list[str]:
  """Each `python -m starbucks_jax.X ...` / `starbucks-X ...` command in code blocks and inline code,
  continuation lines joined, cut at `&&`, `;`, `|` and comments."""
  found = []
  pieces = [block.replace("\\\n", " ") for block in CODE_BLOCK.findall(text)]
  pieces += [span.replace("\n", " ") for span in INLINE.findall(CODE_BLOCK.sub("", text))]
  for piece in pieces:
    for line in piece.splitlines():
      line = line.split(" #")[0]
      for part in re.split(r"&&|;|\|\s+(?!-)", line):  # a pipe, not the "a | --b" of a usage line
        match = COMMAND.search(part)
        if match:
          found.append(part[match.start():].strip())
  return found


def _flags_of(command: str) -> set[str]:
  if command == "train":
    from starbucks_jax.cli.train import _flag_values
    return {f"--{name}" for name in _flag_values()} | {"--help", "-h"}
  import importlib
  parser = importlib.import_module(f"starbucks_jax.cli.{command}").build_parser()
  return {option for action in parser._actions for option in action.option_strings}


def _config_fields(config_file: str | None):
  """The ConfigDict a command's `--config FILE[:ARG]` names (the default config when it names a
  placeholder such as configs/X.py)."""
  from starbucks_jax.training.defaults import base_config, smae_base_config
  if not config_file or not (REPO / config_file.split(":")[0]).is_file():
    return [base_config(), smae_base_config()]  # a placeholder: a setting of either task
  path, _, arg = config_file.partition(":")
  import importlib.util
  spec = importlib.util.spec_from_file_location("doc_config", REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  return [config]


def problems_of(command_line: str) -> list[str]:
  """What is wrong with one documented command: flags its parser lacks, config keys its config lacks."""
  try:
    words = shlex.split(command_line.replace("[", " ").replace("]", " "))
  except ValueError:
    words = command_line.replace("[", " ").replace("]", " ").split()
  command = COMMAND.match(command_line).group(1)
  flags = _flags_of(command)
  config_file = next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "--config"), None)
  config = _config_fields(config_file) if command == "train" else []
  problems = []
  for word in words[3 if words[0] == "python" else 1:]:  # after the program's name
    if not word.startswith("-") or word == "-" or re.fullmatch(r"-\d.*", word):
      continue
    name = word.split("=")[0].rstrip(".,)")
    if command == "train" and name.startswith("--config."):
      key = name[len("--config."):]
      if key.lower() != "key" and not any(_has_key(c, key) for c in config):  # "key": a placeholder
        problems.append(f"{command}: --config.{key} is not a setting of {config_file}")
      continue
    if name.split("|")[0] not in flags:
      problems.append(f"{command}: {name} is not a flag of python -m starbucks_jax.{command}")
  return problems


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def test_every_documented_command_names_flags_that_exist():
  checked, problems = 0, []
  for path in documented_files():
    for command in commands_in(path.read_text()):
      checked += 1
      problems += [f"{path.relative_to(REPO)}: {p}  [{command}]" for p in problems_of(command)]
  assert checked > 40, checked  # the docs show this many commands; a parser that finds none checks nothing
  assert not problems, "\n".join(problems)


def test_the_checker_finds_a_flag_or_setting_that_does_not_exist():
  text = ("```bash\npython -m starbucks_jax.encode --model m --layr 2 \\\n    --output e.npy\n```\n"
          "and `python -m starbucks_jax.train --config configs/quickstart.py --workdir w --config.optimizer.lrr=1`")
  found = commands_in(text)
  assert len(found) == 2
  assert problems_of(found[0]) == ["encode: --layr is not a flag of python -m starbucks_jax.encode"]
  assert problems_of(found[1]) == ["train: --config.optimizer.lrr is not a setting of configs/quickstart.py"]
  assert problems_of("python -m starbucks_jax.export --workdir w --num-layers 2 --output o") == []


def test_the_readme_reads_in_one_sitting():
  lines = (REPO / "README.md").read_text().splitlines()
  assert len(lines) <= README_MAX_LINES, len(lines)
  for target in re.findall(r"\]\(((?:docs/|tests/|[A-Z]+\.md)[^)#]*)", "\n".join(lines)):
    assert (REPO / target).exists(), target


def test_the_docs_site_builds_strict(tmp_path):
  # The docs extra (mkdocs-material, mkdocstrings) comes with the test extra that tests/run.sh installs.
  out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert out.returncode == 0, out.stderr[-4000:]
  for page in ("index.html", "training/index.html", "api/encoder/index.html", "models-export/index.html"):
    assert (tmp_path / "site" / page).is_file(), page
  # The API reference is generated from the docstrings: Encoder's methods are on its page.
  assert "encode_layers" in (tmp_path / "site" / "api" / "encoder" / "index.html").read_text()
