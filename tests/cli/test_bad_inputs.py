"""Bad input and faults against the four commands and the Python API, as a careless user makes them: each
ends in one `error:` line naming the problem (raised before anything compiles where it can be), or in the
right result; and no file of a training workdir changes (checksums before and after)."""

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO, run_train, tiny_config

STSB = REPO / "data" / "quickstart" / "stsb_test.jsonl"
DL19 = REPO / "data" / "beir" / "msmarco-dl19-slice"
QUICKSTART = str(REPO / "configs" / "quickstart.py")


def checksums(folder: Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
  """A finished 4-step run of the tiny model: checkpoints at 2 and 4, and its export."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  run_train(tiny_config(tiny_dir, **{"num_steps": 4, "checkpoint.every_steps": 2}), workdir)
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the run for one case; the case must leave every file of it as it was."""
  copy = tmp_path / "parent" / "wd"
  shutil.copytree(trained, copy)
  before = checksums(copy)
  yield copy
  assert checksums(copy) == before, "a file of the workdir changed"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Bad input files, one of each kind."""
  root = tmp_path_factory.mktemp("bad_files")
  rows = [json.loads(line) for line in STSB.read_text().splitlines()[:20]]
  write = lambda name, lines: (root / name).write_text("".join(json.dumps(r) + "\n" for r in lines)) or root / name
  write("one_row.jsonl", rows[:1])
  write("nan_score.jsonl", rows[:5] + [dict(rows[5], score=float("nan"))])
  write("equal_scores.jsonl", [dict(r, score=3.0) for r in rows])
  (root / "malformed.json").write_text('[{"sentence1": "a", "sentence2": "b", "score": 1},\n {"sentence1": }]\n')
  (root / "not_utf8.jsonl").write_bytes(b'{"sentence1": "a", "sentence2": "b", "score": 1}\n'
                                        b'{"sentence1": "caf\xe9", "sentence2": "b", "score": 2}\n')
  triplets = (REPO / "data" / "quickstart" / "snli_triplets.jsonl").read_bytes().splitlines(keepends=True)[:40]
  (root / "triplets_not_utf8.jsonl").write_bytes(b"".join(triplets[:7]) + b'{"anchor": "\xff", "positive": "b", '
                                                 b'"negative": "c"}\n' + b"".join(triplets[7:]))
  (root / "texts.txt").write_text("a man plays a guitar\ntwo dogs run\n")
  (root / "blank.txt").write_text("\n  \n\n")
  (root / "texts_not_utf8.txt").write_bytes(b"fine\nnot \x80 fine\n")
  (root / "a_folder").mkdir()
  (root / "none_config.py").write_text("def get_config():\n  return None\n")
  beir = root / "absent_beir"
  shutil.copytree(DL19, beir)
  (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n19335\tno-such-passage\t1\n")
  return root


def train_main(*args):
  from starbucks_jax.cli.train import main
  return main(list(args))


def evaluate_main(*args):
  from starbucks_jax.cli.evaluate import main
  return main(list(args))


def encode_main(*args):
  from starbucks_jax.cli.encode import main
  return main(list(args))


def export_main(*args):
  from starbucks_jax.cli.export import main
  return main(list(args))


# --- train: the config, the workdir, the data; all before anything compiles ---

@pytest.mark.parametrize("override, message", [
    ("--config.starbucks.pairs=abc", r"starbucks.pairs: 'abc' is not a \(layer, dim\) pair"),
    ("--config.starbucks.pairs=(2,32)", r"starbucks.pairs: 2 is not a \(layer, dim\) pair"),
    ("--config.starbucks.pairs=((2.7,32.9),)", r"each pair must be \(layer, dim\) integers, got \(2.7, 32.9\)"),
    ("--config.optimizer.lr=inf", "optimizer.lr must be a positive finite number, got inf"),
    ("--config.data.query_max_length=100000", "data.query_max_length 100000 exceeds the model's "
                                              r"64 positions \(max_position_embeddings 64\)"),
    ("--config.optimizer.no_such_key=1", "^unknown config key optimizer.no_such_key$"),
    ("--config.batch_sise=8", '^unknown config key batch_sise; did you mean "batch_size"'),
    ("--wrkdir=x", r"^unknown flag --wrkdir \(python -m starbucks_jax.train --help lists them\)$"),
    ("--config.wandb.mode=sometimes", "wandb.mode must be one of online, offline, disabled, got 'sometimes'"),
    ("--config.wandb.project=p", r"config.wandb.mode is online and no W&B API key is set \(run `wandb login`"),
    ("--config.data.packing=True --config.grad_cache.query_chunk=8 --config.grad_cache.passage_chunk=16",
     "with data.packing, a GradCache chunk is its queries and their passages: leave grad_cache.passage_chunk at 0"),
    ("--config.data.packing=True --config.data.pack_length=16", "data.pack_length 16 is shorter than the longest "
                                                                r"text allowed \(32 tokens"),
    ("--config.data.query_prompt=a --config.data.query_prefix=b", r"data.query_prompt 'a' and data.query_prefix 'b' "
                                                                  r"\(its older name\) differ; set one of them"),
    (f"--config.data.clean_negatives=True --config.starbucks.objective=cosent --config.data.source={STSB}",
     "data.clean_negatives masks in-batch negatives, and the cosent objective on scored data has none"),
])
def test_train_refuses_bad_settings_before_compiling(override, message, tiny_dir, tmp_path, monkeypatch):
  importlib.import_module("starbucks_jax.training.loop")  # imported before jax.jit is made to fail
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))  # no `wandb login` either
  import jax
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the error"))
  with pytest.raises(StarbucksError, match=message):
    train_main("--config", QUICKSTART, "--workdir", str(tmp_path / "run"), f"--config.model.name={tiny_dir}",
               "--config.starbucks.pairs=((1,8),(2,16),(4,32))", *override.split())
  assert not (tmp_path / "run").exists()


def test_train_names_bad_files_and_workdirs(files, tiny_dir, tmp_path, workdir):
  base = ["--config", QUICKSTART, f"--config.model.name={tiny_dir}", "--config.eval.sts=()",
          "--config.starbucks.pairs=((1,8),(2,16),(4,32))"]
  with pytest.raises(StarbucksError, match=r"triplets_not_utf8.jsonl, line 8, column 13: byte 0xff is not UTF-8"):
    train_main(*base, "--workdir", str(tmp_path / "a"), f"--config.data.source={files / 'triplets_not_utf8.jsonl'}")
  with pytest.raises(StarbucksError, match="--workdir .*texts.txt exists and is a file, not a folder"):
    train_main(*base, "--workdir", str(files / "texts.txt"))
  with pytest.raises(StarbucksError, match="--workdir /proc/starbucks_run cannot be written"):
    train_main(*base, "--workdir", "/proc/starbucks_run")
  with pytest.raises(StarbucksError, match=r"config file .*none_config.py: get_config\(\) returned None"):
    train_main("--config", str(files / "none_config.py"), "--workdir", str(tmp_path / "b"))
  with pytest.raises(StarbucksError, match="STS file .*one_row.jsonl has 1 row; a correlation needs at least 2"):
    run_train(tiny_config(tiny_dir, **{"eval.sts": (str(files / "one_row.jsonl"),)}), tmp_path / "c")
  assert not (tmp_path / "c").exists()
  # A workdir whose recorded config is cut short: refused by name, nothing touched (the fixture checks).
  saved = workdir / "config.json"
  text = saved.read_text()
  saved.write_text(text[: len(text) // 2])
  with pytest.raises(StarbucksError, match=r"config.json \(the config of the run that wrote this workdir\) is "
                                           "damaged: not valid JSON"):
    run_train(tiny_config(tiny_dir, **{"num_steps": 4, "checkpoint.every_steps": 2}), workdir)
  saved.write_text(text)


def test_train_help_lists_the_flags(capsys):
  with pytest.raises(SystemExit) as exit_info:
    train_main("--help")
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert all(flag in out for flag in ("--config FILE", "--workdir DIR", "--config.KEY=VALUE", "--dry_run",
                                      "--cpu_devices N"))


def test_a_failing_evaluation_costs_no_training(tiny_dir, tmp_path, monkeypatch, caplog):
  from starbucks_jax.training.evaluation import TrainingEvaluator

  def broken(self, params):
    raise RuntimeError("the scorer broke")

  monkeypatch.setattr(TrainingEvaluator, "__call__", broken)
  summary = run_train(tiny_config(tiny_dir, **{"eval.sts": (str(STSB),), "num_steps": 2}), tmp_path / "run")
  assert summary["step"] == 2 and (tmp_path / "run" / "checkpoints" / "2").is_dir()
  assert (summary["export"] / "model.safetensors").is_file()
  assert "evaluation at step 2 failed, training goes on: RuntimeError: the scorer broke" in caplog.text


# --- evaluate ---

@pytest.mark.parametrize("name, message", [
    ("nan_score.jsonl", r"nan_score.jsonl, row 6: score nan is not a finite number"),
    ("equal_scores.jsonl", "equal_scores.jsonl: every score is 3; a correlation needs different scores"),
    ("one_row.jsonl", "one_row.jsonl has 1 row; a correlation needs at least 2"),
    ("malformed.json", r"malformed.json: not JSON \(Expecting value at line 2, column 16\)"),
    ("not_utf8.jsonl", r"not_utf8.jsonl, line 2, column 19: byte 0xe9 is not UTF-8"),
    ("a_folder", "a_folder is a folder, not a file"),
])
def test_evaluate_refuses_bad_sts_files(name, message, files, tiny_dir, tmp_path):
  with pytest.raises(StarbucksError, match=message):
    evaluate_main("--model", str(tiny_dir), "--sts", str(files / name), "--output", str(tmp_path / "r.json"))
  assert not any(tmp_path.iterdir())


def test_evaluate_refuses_bad_folders_and_outputs(files, tiny_dir, tmp_path, workdir):
  with pytest.raises(StarbucksError, match=r"test.tsv: none of its 1 judgement\(s\) names a passage of .*corpus"):
    evaluate_main("--model", str(tiny_dir), "--beir", str(files / "absent_beir"), "--output", str(tmp_path / "r.json"))
  with pytest.raises(StarbucksError, match="--output /proc/x/r.json cannot be written"):
    evaluate_main("--model", str(tiny_dir), "--sts", str(STSB), "--output", "/proc/x/r.json")
  with pytest.raises(StarbucksError, match="cannot write the results /dev/full: the disk is full"):
    evaluate_main("--model", str(tiny_dir), "--sts", str(STSB), "--pairs", "4:32", "--output", "/dev/full")
  with pytest.raises(StarbucksError, match="no checkpoint at step 3; saved steps: 2, 4"):
    evaluate_main("--model", str(workdir), "--step", "3", "--sts", str(STSB), "--output", str(tmp_path / "r.json"))
  model_config = workdir / "model" / "config.json"
  text = model_config.read_text()
  model_config.write_text(text[:40])
  with pytest.raises(StarbucksError, match=r"model/config.json is not valid JSON"):
    evaluate_main("--model", str(workdir), "--sts", str(STSB), "--output", str(tmp_path / "r.json"))
  model_config.write_text(text)


# --- encode ---

def test_encode_writes_exactly_the_output_it_is_given(files, tiny_dir, tmp_path, workdir):
  encode_main("--model", str(tiny_dir), "--input", str(files / "texts.txt"), "--output", str(tmp_path / "emb.bin"))
  assert sorted(p.name for p in tmp_path.iterdir() if p.name != "parent") == ["emb.bin"]  # no "emb.bin.npy"
  assert np.load(tmp_path / "emb.bin").shape == (2, 32)
  # A workdir is a model too: its newest checkpoint, or --step.
  encode_main("--model", str(workdir), "--step", "2", "--layer", "2", "--dim", "16", "--input",
              str(files / "texts.txt"), "--output", str(tmp_path / "w.npy"))
  assert np.load(tmp_path / "w.npy").shape == (2, 16)


@pytest.mark.parametrize("case, message", [
    ("output folder", "--output .*a_folder is a folder; give a file name"),
    ("output device full", "cannot write output /dev/full: the disk is full"),
    ("output under /proc", "--output /proc/x/e.npy cannot be written"),
    ("blank input", "blank.txt has only blank lines"),
    ("input not UTF-8", r"texts_not_utf8.txt, line 2, column 5: byte 0x80 is not UTF-8"),
    ("input folder", "input .*a_folder is a folder; give a text file"),
])
def test_encode_refuses_bad_inputs_and_outputs(case, message, files, tiny_dir, tmp_path):
  args = {"--input": str(files / "texts.txt"), "--output": str(tmp_path / "e.npy")}
  args.update({"output folder": {"--output": str(files / "a_folder")}, "output device full": {"--output": "/dev/full"},
               "output under /proc": {"--output": "/proc/x/e.npy"}, "blank input": {"--input": str(files / "blank.txt")},
               "input not UTF-8": {"--input": str(files / "texts_not_utf8.txt")},
               "input folder": {"--input": str(files / "a_folder")}}[case])
  with pytest.raises(StarbucksError, match=message):
    encode_main("--model", str(tiny_dir), *[x for pair in args.items() for x in pair])
  assert not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(texts=["ok", None]), r"texts\[1\] is NoneType None, not a string"),
    (dict(texts=[5]), r"texts\[0\] is int 5, not a string"),
    (dict(texts=["ok"], layer=2.5), "layer and dim must be integers, got layer=2.5"),
    (dict(texts=["ok"], dim="32"), "layer and dim must be integers, got layer=4, dim='32'"),
    (dict(texts=["ok"], prompt=5), r'prompt must be a string \(\"\" for none\), got int 5'),
])
def test_encoder_api_refuses_what_is_not_text_or_a_size(kwargs, message, tiny_dir):
  from starbucks_jax.inference.encoder import Encoder
  with pytest.raises(StarbucksError, match=message):
    Encoder.from_pretrained(tiny_dir).encode(**kwargs)


@pytest.mark.parametrize("flags, message", [
    (["--prompt", "query: ", "--prompt-name", "query"], "--prompt and --prompt-name do not combine"),
    (["--prompt-name", "query"], r"--model .* has no prompt named 'query' \(its prompts: none\)"),
])
def test_encode_refuses_bad_prompts_before_loading_the_model(flags, message, files, tiny_dir, tmp_path, monkeypatch):
  from starbucks_jax.inference.encoder import Encoder
  monkeypatch.setattr(Encoder, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model before the error"))
  with pytest.raises(StarbucksError, match=message):
    encode_main("--model", str(tiny_dir), "--input", str(files / "texts.txt"), "--output", str(tmp_path / "e.npy"),
                *flags)
  assert not (tmp_path / "e.npy").exists()


# --- export: --overwrite replaces a previous export and nothing else ---

@pytest.mark.parametrize("target, message", [
    ("checkpoints", r"holds more than a previous export \(2, 4\); --overwrite replaces only an export folder"),
    ("parent", "is or holds the model being exported"),
    ("itself", "is or holds the model being exported"),
])
def test_export_overwrite_never_removes_a_run(target, message, workdir):
  output = {"checkpoints": workdir / "checkpoints", "parent": workdir.parent, "itself": workdir}[target]
  with pytest.raises(StarbucksError, match=message):
    export_main("--workdir", str(workdir), "--output", str(output), "--overwrite")
  with pytest.raises(StarbucksError, match=message):
    export_main("--model", str(workdir), "--output", str(output), "--overwrite")


def test_export_overwrite_replaces_a_previous_export_only(trained, tiny_dir, tmp_path):
  copy = tmp_path / "wd"
  shutil.copytree(trained, copy)
  before = {k: v for k, v in checksums(copy).items() if not k.startswith("export/")}
  export_main("--workdir", str(copy), "--step", "2", "--output", str(copy / "export"), "--overwrite")
  assert {k: v for k, v in checksums(copy).items() if not k.startswith("export/")} == before
  assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in trained.iterdir())  # no leftovers
  with pytest.raises(StarbucksError, match="is or holds the model being exported"):
    export_main("--model", str(tiny_dir), "--output", str(tiny_dir), "--overwrite")
  with pytest.raises(StarbucksError, match="--output /proc/x cannot be written"):
    export_main("--model", str(tiny_dir), "--output", "/proc/x")
  mode = (copy / "export" / "model.safetensors").stat().st_mode & 0o777
  assert mode == (copy / "export" / "config.json").stat().st_mode & 0o777 and mode & 0o044  # readable by others


def test_export_serves_the_starting_models_length_not_the_training_crop(tiny_dir, tmp_path):
  """The tiny model's sentence-transformers max_seq_length (48 here) survives training at 32 tokens;
  `export.max_seq_length` sets another."""
  start = tmp_path / "start"
  shutil.copytree(tiny_dir, start)
  (start / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
  summary = run_train(tiny_config(start, num_steps=1), tmp_path / "run")
  assert json.loads((summary["export"] / "sentence_bert_config.json").read_text())["max_seq_length"] == 48
  from starbucks_jax.runtime.workdir import resolve
  from starbucks_jax.training.config import ExportConfig
  source = resolve(start)
  assert ExportConfig(max_seq_length=40).serving_length(source, source.config()) == 40
  assert ExportConfig(max_seq_length=4000).serving_length(source, source.config()) == 64  # the position limit


# --- what a newcomer meets ---

def test_a_torch_free_install_says_nothing_about_pytorch(minilm_dir):
  code = ("import sys; sys.modules['torch'] = None\n"
          "from starbucks_jax.hf.load import load_tokenizer\n"
          f"print(len(load_tokenizer({str(minilm_dir)!r})))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0 and out.stdout.strip() == "30522", out.stderr[-2000:]
  assert "PyTorch" not in out.stderr


def test_the_readmes_example_outputs_are_ignored_by_git():
  if not (REPO / ".git").exists():
    pytest.skip("not a git checkout")
  out = subprocess.run(["git", "check-ignore", "emb.npy", "results/r.json", "small/config.json", "runs/x"],
                       cwd=REPO, capture_output=True, text=True)
  assert out.stdout.split() == ["emb.npy", "results/r.json", "small/config.json", "runs/x"], out.stdout


@pytest.mark.parametrize("command, args, message", [
    ("train", ["--config", QUICKSTART, "--workdir", "/tmp/x", "--config.batch_sise=1"],
     'error: unknown config key batch_sise; did you mean "batch_size" instead of "batch_sise"?'),
    ("encode", ["--input", "/nonexistent/texts.txt", "--output", "/tmp/e.npy"],
     "error: input file /nonexistent/texts.txt does not exist"),
    ("encode", ["--input", "/nonexistent/texts.txt", "--output", "/tmp/e.npy", "--prompt", "q", "--prompt-name", "q"],
     "error: --prompt and --prompt-name do not combine: give the prompt's text or its name"),
    ("export", ["--model", "/nonexistent/model", "--output", "/tmp/x"],
     "error: model folder /nonexistent/model does not exist"),
    ("mine", ["--train", str(REPO / "data" / "quickstart" / "snli_triplets.jsonl"), "--layer", "7",
              "--output", "/tmp/starbucks_mine_never_written.jsonl"],
     "error: layer 7 is outside 1..6 (the model has 6 layers)"),
])
def test_one_plain_error_line_from_the_command(command, args, message):
  out = subprocess.run([sys.executable, "-m", f"starbucks_jax.{command}", *args], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert out.returncode == 2 and lines == [message], out.stderr[-2000:]


# --- a bucket (gs://) that cannot be used: one line, before anything loads or compiles ---

def bucket_error(args, **env):
  """stderr's lines of `python -m starbucks_jax.train` with `env` changed (None removes a variable)."""
  environment = {k: v for k, v in dict(os.environ, **env).items() if v is not None}
  out = subprocess.run([sys.executable, "-m", "starbucks_jax.train", "--config", QUICKSTART, *args],
                       capture_output=True, text=True, cwd=REPO, env=environment, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  return [line for line in out.stderr.splitlines() if line.strip()]


def test_bucket_problems_are_one_error_line(gcs, tiny_dir, tmp_path):
  from tests.gcs_server import free_port
  assert bucket_error(["--workdir", "gs://nobucket/run"]) == [
      "error: --workdir gs://nobucket/run: bucket nobucket does not exist"]
  port = free_port()  # nothing listens there
  assert bucket_error(["--workdir", "gs://bucket/run"], STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}",
                      TENSORSTORE_GCS_HTTP_URL=None) == [
      f"error: --workdir gs://bucket/run: cannot reach the storage server 127.0.0.1:{port} (connection refused)"]
  # Without an emulator and without credentials (no file, no metadata server): the real GCS is never asked.
  lines = bucket_error(["--workdir", "gs://bucket/run"], STORAGE_EMULATOR_HOST=None, TENSORSTORE_GCS_HTTP_URL=None,
                       GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "absent.json"), NO_GCE_CHECK="True")
  assert len(lines) == 1 and lines[0].startswith("error: --workdir gs://bucket/run: no Google Cloud credentials ("), lines
  assert "gcloud auth application-default login" in lines[0]

  # In process: inputs and outputs named by the setting or flag that gave them.
  base = ["--config", QUICKSTART, f"--config.model.name={tiny_dir}", "--config.eval.sts=()",
          "--config.starbucks.pairs=((1,8),(2,16),(4,32))"]
  with pytest.raises(StarbucksError, match="^data file gs://bucket/absent.jsonl does not exist$"):
    train_main(*base, "--workdir", str(tmp_path / "a"), "--config.data.source=gs://bucket/absent.jsonl")
  with pytest.raises(StarbucksError, match="^model.name gs://nobucket/model: bucket nobucket does not exist$"):
    train_main(*base, "--workdir", str(tmp_path / "b"), "--config.model.name=gs://nobucket/model")
  with pytest.raises(StarbucksError, match="^model folder gs://bucket/absent does not exist$"):
    train_main(*base, "--workdir", str(tmp_path / "c"), "--config.init_from=gs://bucket/absent")
  with pytest.raises(StarbucksError, match="^--output gs://nobucket/r.json: bucket nobucket does not exist$"):
    evaluate_main("--model", str(tiny_dir), "--sts", str(STSB), "--output", "gs://nobucket/r.json")
  with pytest.raises(StarbucksError, match="^STS file gs://bucket/absent.jsonl does not exist$"):
    evaluate_main("--model", str(tiny_dir), "--sts", "gs://bucket/absent.jsonl", "--output", str(tmp_path / "r.json"))
  with pytest.raises(StarbucksError, match="^workdir gs://bucket/absent does not exist$"):
    export_main("--workdir", "gs://bucket/absent", "--output", str(tmp_path / "x"))
  assert not any((tmp_path / name).exists() for name in ("a", "b", "c", "r.json", "x"))
