"""Runs that live in a bucket, against a real GCS server on 127.0.0.1 (fake-gcs-server, `gcs` fixture):
a gs:// workdir killed with -9 and resumed, SIGTERM then a damaged newest checkpoint, each ending
bit-identical to an uninterrupted local run; the model, the data and the STS file read from the bucket;
`evaluate`, `encode` and `export` of a gs:// workdir equal to those of the local one; W&B offline logs
equal to metrics.jsonl; TensorBoard events in the bucket. Each run is the real
`python -m starbucks_jax.train` on a tiny random BERT, CPU, float32."""

import json
import os
import random
import signal
import struct
import subprocess
import time
import uuid

import numpy as np
import pytest

from tests.helpers import REPO
from tests.runtime.test_preemption import EVERY, STEPS, assert_bit_identical, command

STS_ROWS = 64
WANDB = ["--config.wandb.project=starbucks-tests", "--config.wandb.mode=offline"]


def bucket_url(name: str) -> str:
  return f"gs://bucket/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def inputs(gcs, tiny_dir, tmp_path_factory):
  """The tiny model, the training file and a small STS file, locally and as copies in the bucket."""
  from starbucks_jax import storage
  local = tmp_path_factory.mktemp("inputs")
  sts_lines = (REPO / "data" / "quickstart" / "stsb_test.jsonl").read_text().splitlines()[:STS_ROWS]
  (local / "sts.jsonl").write_text("\n".join(sts_lines) + "\n")
  remote = bucket_url("inputs")
  storage.upload_tree(tiny_dir, f"{remote}/tiny")
  storage.as_path(f"{remote}/snli.jsonl").write_bytes((REPO / "data" / "quickstart" / "snli_triplets.jsonl").read_bytes())
  storage.as_path(f"{remote}/sts.jsonl").write_bytes((local / "sts.jsonl").read_bytes())
  return {"local": {"model": str(tiny_dir), "data": str(REPO / "data" / "quickstart" / "snli_triplets.jsonl"),
                    "sts": str(local / "sts.jsonl")},
          "bucket": {"model": f"{remote}/tiny", "data": f"{remote}/snli.jsonl", "sts": f"{remote}/sts.jsonl"}}


def run_command(workdir, files, *extra, model_flag="model.name"):
  cmd = command(workdir, files["model"])
  cmd = [a for a in cmd if not a.startswith(("--config.model.name=", "--config.eval.sts="))]
  return cmd + [f"--config.{model_flag}={files['model']}", f"--config.data.source={files['data']}",
                f"--config.eval.sts=({files['sts']!r},)"] + list(extra)


def train(cmd, **env):
  return subprocess.run(cmd, env=dict(os.environ, **env), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory):
  """The uninterrupted run on a local disk, with W&B in offline mode."""
  workdir = tmp_path_factory.mktemp("local") / "run"
  out = train(run_command(workdir, inputs["local"], *WANDB))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def bucket_run(inputs, tmp_path_factory):
  """A gs:// workdir (model, data and STS file read from the bucket too), killed with -9 after a random
  step past the first checkpoint, then resumed; W&B offline and TensorBoard on. (workdir, kill step)."""
  workdir = bucket_url("runs/killed")
  cmd = run_command(workdir, inputs["bucket"], *WANDB, "--config.tensorboard=True")
  kill_at = random.randrange(EVERY + 1, STEPS)
  killed = train(cmd, STARBUCKS_FAULT_KILL_AT_STEP=str(kill_at))
  assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
  resumed = train(cmd)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from the checkpoint at step {kill_at // EVERY * EVERY}" in resumed.stderr, resumed.stderr[-2000:]
  return workdir, kill_at


def wandb_history(offline_run_dir) -> list[dict]:
  """The rows a W&B offline run logged, read from its .wandb file (LevelDB's log format: 32 KiB blocks of
  records, each with a 7-byte header; the file starts with a 7-byte header of its own)."""
  from wandb.proto import wandb_internal_pb2
  (path,) = offline_run_dir.glob("run-*.wandb")
  data, position, payload, rows = path.read_bytes(), 7, b"", []
  while position + 7 <= len(data):
    if 32768 - position % 32768 < 7:  # a block's trailer too short for a header is padding
      position += 32768 - position % 32768
      continue
    length, kind = struct.unpack("<HB", data[position + 4:position + 7])
    payload += data[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (1, 4):  # a whole record, or the last piece of one
      record = wandb_internal_pb2.Record()
      record.ParseFromString(payload)
      payload = b""
      if record.WhichOneof("record_type") == "history":
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        rows.append({"step": items.pop("_step"), **{k: v for k, v in items.items() if not k.startswith("_")}})
  return rows


def wandb_runs(folder) -> list:
  return sorted(folder.glob("wandb/offline-run-*"))


def without_timing(rows):
  return [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]


def tensorboard_scalars(folder, tag: str) -> dict[int, float]:
  """{step: value} of one scalar over every TensorBoard event file in `folder` (local or gs://)."""
  from starbucks_jax import storage
  from tensorboardX.proto import event_pb2
  values = {}
  for name in storage.files_under(folder):
    data, position = storage.as_path(folder).joinpath(name).read_bytes(), 0
    while position + 12 <= len(data):  # TFRecord: length, its CRC, the record, its CRC
      (length,) = struct.unpack("<Q", data[position:position + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[position + 12:position + 12 + length])
      position += 12 + length + 4
      values.update({event.step: v.simple_value for v in event.summary.value if v.tag == tag})
  return values


def test_killed_bucket_run_resumes_bit_identical_to_a_local_run(bucket_run, local_run):
  from starbucks_jax import storage
  from starbucks_jax.runtime.metrics import read_metrics
  workdir, kill_at = bucket_run
  assert_bit_identical(workdir, local_run)
  bucket_rows, local_rows = read_metrics(workdir), read_metrics(local_run)
  assert without_timing(bucket_rows) == without_timing(local_rows)
  assert "eval/sts/n4_d32/spearman" in bucket_rows[-1]  # the STS file read from the bucket
  # The export at the end, written into the bucket, is byte for byte the local one.
  for name in storage.files_under(local_run / "export"):
    assert storage.as_path(f"{workdir}/export/{name}").read_bytes() == (local_run / "export" / name).read_bytes(), name

  # W&B: one run id, kept in the bucket, continued by the resumed process; each attempt logged exactly
  # the rows of metrics.jsonl (the killed one's rows after its checkpoint were logged again, unchanged).
  run_id = storage.as_path(f"{workdir}/wandb_run_id.txt").read_text().strip()
  attempts = [r for r in wandb_runs(storage.cache_root().parent) if r.name.endswith(run_id)]
  assert len(attempts) == 2, attempts
  first, second = (wandb_history(a) for a in attempts)
  checkpoint = kill_at // EVERY * EVERY
  # kill -9 gives W&B no time to flush: what of the killed attempt reached its file (offline, here nothing)
  # is a prefix of metrics.jsonl. (A SIGTERM, below, closes the W&B run properly.)
  assert len(first) <= kill_at and without_timing(first) == without_timing(bucket_rows[:len(first)])
  assert second == bucket_rows[checkpoint:]  # the same process wrote both: timings too

  # TensorBoard events, written into the bucket by the resumed run (the killed one's were never flushed).
  losses = tensorboard_scalars(f"{workdir}/tensorboard", "loss")
  assert {s: losses[s] for s in range(checkpoint + 1, STEPS + 1)} == pytest.approx(
      {r["step"]: r["loss"] for r in bucket_rows[checkpoint:]}, rel=1e-6)


def test_wandb_offline_logs_equal_metrics_jsonl(local_run):
  from starbucks_jax.runtime.metrics import read_metrics
  run_id = (local_run / "wandb_run_id.txt").read_text().strip()
  (attempt,) = wandb_runs(local_run)
  assert attempt.name.endswith(run_id)
  assert wandb_history(attempt) == read_metrics(local_run)


def test_evaluate_encode_and_export_of_a_bucket_workdir_equal_local(bucket_run, local_run, inputs, tmp_path):
  from starbucks_jax import storage
  from starbucks_jax.cli.encode import main as encode
  from starbucks_jax.cli.evaluate import main as evaluate
  from starbucks_jax.cli.export import main as export
  workdir, _ = bucket_run
  results = bucket_url("results")
  for model, output in ((workdir, f"{results}/bucket.json"), (str(local_run), str(tmp_path / "local.json"))):
    evaluate(["--model", model, "--sts", inputs["bucket"]["sts"], "--pairs", "1:8,4:32", "--output", output])
  bucket_scores = json.loads(storage.as_path(f"{results}/bucket.json").read_text())
  assert bucket_scores == json.loads((tmp_path / "local.json").read_text())
  assert storage.as_path(f"{results}/bucket_sts.png").read_bytes()[:4] == b"\x89PNG"  # the heatmap beside it

  texts = tmp_path / "texts.txt"
  texts.write_text("a man plays a guitar\nthe cat sleeps on the sofa\n")
  for model, output in ((workdir, f"{results}/v.npy"), (str(local_run), str(tmp_path / "v.npy"))):
    encode(["--model", model, "--layer", "2", "--dim", "16", "--input", str(texts), "--output", output])
  with storage.as_path(f"{results}/v.npy").open("rb") as f:
    np.testing.assert_array_equal(np.load(f), np.load(tmp_path / "v.npy"))

  exported = bucket_url("exports")
  export(["--workdir", workdir, "--num-layers", "2", "--output", exported])
  export(["--workdir", str(local_run), "--num-layers", "2", "--output", str(tmp_path / "x")])
  names = storage.files_under(tmp_path / "x")
  assert storage.files_under(exported) == names and "model.safetensors" in names
  for name in names:
    assert storage.as_path(f"{exported}/{name}").read_bytes() == (tmp_path / "x" / name).read_bytes(), name
  # Only --overwrite replaces a previous export in the bucket; it removes what the new one lacks.
  from starbucks_jax.errors import StarbucksError
  storage.as_path(f"{exported}/2_Normalize/stale.json").write_text("{}")
  with pytest.raises(StarbucksError, match="is not an empty folder"):
    export(["--workdir", workdir, "--output", exported])
  export(["--workdir", workdir, "--output", exported, "--overwrite"])
  assert json.loads(storage.as_path(f"{exported}/config.json").read_text())["num_hidden_layers"] == 4
  assert storage.files_under(exported) == storage.files_under(local_run / "export")


def test_sigterm_then_a_truncated_newest_checkpoint_in_a_bucket(inputs, local_run):
  """SIGTERM: the step in progress saved, exit 0. Then the newest checkpoint's largest file truncated: the
  resumed run names it, sets the step aside, resumes from the one before, and ends as the local run did.
  The run starts from the bucket's model folder through init_from."""
  from starbucks_jax import storage
  from starbucks_jax.runtime import checkpoints
  from starbucks_jax.runtime.metrics import read_metrics
  workdir = bucket_url("runs/sigterm")
  cmd = run_command(workdir, inputs["bucket"], *WANDB, model_flag="init_from")
  process = subprocess.Popen(cmd, env=dict(os.environ, STARBUCKS_FAULT_STEP_SLEEP="0.5"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while len(read_metrics(workdir)) < EVERY + 1:  # past the first checkpoint
    assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  saved = checkpoints.saved_steps(workdir)
  assert saved[0] == EVERY and saved[-1] == read_metrics(workdir)[-1]["step"] < STEPS, saved
  assert f"preempted: saved the checkpoint at step {saved[-1]} of {STEPS}" in stderr

  step_dir = checkpoints.step_dir(workdir, saved[-1])
  name = max((n for n in storage.files_under(step_dir) if n.startswith("params/") and "/d/" in n),
             key=lambda n: storage.size_of(step_dir / n))
  damaged = step_dir / name
  damaged.write_bytes(damaged.read_bytes()[:storage.size_of(damaged) // 2])
  out = train(cmd)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"checkpoint file {damaged} has" in out.stderr
  assert f"resuming from the checkpoint at step {saved[-2]}" in out.stderr
  assert storage.as_path(f"{workdir}/damaged_checkpoints/{saved[-1]}/{name}").is_file()  # kept, not deleted
  assert_bit_identical(workdir, local_run)
  # W&B: the preempted attempt closed its run with every row it logged; the resumed one continued it.
  rows = read_metrics(workdir)
  run_id = storage.as_path(f"{workdir}/wandb_run_id.txt").read_text().strip()
  first, second = (wandb_history(a) for a in wandb_runs(storage.cache_root().parent) if a.name.endswith(run_id))
  assert [r["step"] for r in first] == list(range(1, saved[-1] + 1))
  assert without_timing(first) == without_timing(rows[:saved[-1]]) and second == rows[saved[-2]:]


def test_nothing_in_a_bucket_workdir_is_overwritten_by_a_refused_command(bucket_run, inputs):
  """Another run's config, or an export into the workdir or a folder holding it: refused by name before
  anything loads, and every object of the workdir keeps its bytes."""
  import hashlib
  from starbucks_jax import storage
  from starbucks_jax.cli.export import main as export
  from starbucks_jax.cli.train import main as train_main
  from starbucks_jax.errors import StarbucksError
  workdir, _ = bucket_run
  digest = lambda: {n: hashlib.sha256(storage.as_path(f"{workdir}/{n}").read_bytes()).hexdigest()
                    for n in storage.files_under(workdir)}
  before = digest()
  different = run_command(workdir, inputs["bucket"], *WANDB, "--config.tensorboard=True", "--config.seed=1")
  with pytest.raises(StarbucksError, match="holds checkpoints of a run with a different config .*seed"):
    train_main(different[different.index("--config"):])
  for output in (workdir, workdir.rsplit("/", 1)[0]):
    with pytest.raises(StarbucksError, match="is or holds the model being exported"):
      export(["--workdir", workdir, "--output", output, "--overwrite"])
  assert digest() == before


def test_same_size_damage_in_a_bucket_is_caught_by_the_stores_own_checksum(bucket_run, tmp_path):
  """In a bucket the file list records each object's CRC32C as the server computed it (nothing is read back
  to checksum it): bytes changed at the same size are refused by name on restore."""
  import fsspec
  from starbucks_jax import storage
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.runtime import checkpoints
  workdir, _ = bucket_run
  copy = bucket_url("runs/copy")
  fsspec.filesystem("gcs").copy(f"{workdir}/checkpoints/", f"{copy}/checkpoints", recursive=True)
  step = checkpoints.saved_steps(copy)[-1]
  files = json.loads((checkpoints.step_dir(copy, step) / checkpoints.FILES_MANIFEST).read_text())["files"]
  assert all(set(entry) == {"size", "crc32c"} for entry in files.values())
  checkpoints.check_files(copy, step)  # a server-side copy keeps every object's checksum
  name = max((n for n in files if n.startswith("params/") and "/d/" in n), key=lambda n: files[n]["size"])
  damaged = checkpoints.step_dir(copy, step) / name
  data = bytearray(damaged.read_bytes())
  data[len(data) // 2] ^= 0xFF
  damaged.write_bytes(bytes(data))
  assert storage.size_of(damaged) == files[name]["size"]
  with pytest.raises(StarbucksError, match=f"checkpoint file {damaged} does not match the checksum"):
    checkpoints.restore_params(copy, step)
