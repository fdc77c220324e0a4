"""Prompts (`data/prompts.py`): put before queries and passages the same way in training batches, evaluation,
mining, encode and the export, whose sentence-transformers `encode_query` / `encode_document` read them back;
no prompt changes nothing."""

import dataclasses
import json
import runpy

import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO, run_train, spread_bert, tiny_config

QUERY, PASSAGE = "query: ", "passage: "
PROMPTS = {"query": QUERY, "document": PASSAGE}
SNLI = REPO / "data" / "quickstart" / "snli_triplets.jsonl"
STSB = REPO / "data" / "quickstart" / "stsb_test.jsonl"
DL19 = REPO / "data" / "beir" / "msmarco-dl19-slice"
TEXTS = ["a man plays a guitar on the street", "two dogs run on the beach", "the cat sleeps on the sofa"]

pytestmark = pytest.mark.usefixtures("datasets_cache")


def rows_of(path, n=None) -> list[dict]:
  # split("\n"), not splitlines(): MS MARCO text holds U+0085, which splitlines() would break at.
  return [json.loads(line) for line in path.read_text().split("\n") if line][:n]


def write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.fixture(scope="module")
def spread_dir(tmp_path_factory, minilm_dir):
  return spread_bert(tmp_path_factory.mktemp("spread_bert"), minilm_dir)


@pytest.fixture(scope="module")
def trained(spread_dir, tmp_path_factory):
  """Two steps of the tiny model on SNLI triplets with a query and a passage prompt, and its export."""
  workdir = tmp_path_factory.mktemp("prompted") / "run"
  run_train(tiny_config(spread_dir, **{"num_steps": 2, "checkpoint.every_steps": 2, "data.query_prompt": QUERY,
                                       "data.passage_prompt": PASSAGE}), workdir)
  return workdir


# --- training batches ---

def unpacked_texts(batch, count: int, first: int = 0) -> list[list[int]]:
  """The ids of texts first .. first + count - 1 of a packed batch, each in its own order."""
  out = []
  for text in range(first, first + count):
    at = batch["segment_ids"] == text
    out.append(batch["input_ids"][at][np.argsort(batch["position_ids"][at])].tolist())
  return out


@pytest.mark.parametrize("packing", [False, True])
def test_batches_put_the_prompts_before_each_text_within_the_max_length(tokenizer, packing):
  from starbucks_jax.data.srl import DataConfig, TrainData
  data = TrainData(DataConfig(source=str(SNLI), query_max_length=12, passage_max_length=16, query_prompt=QUERY,
                              passage_prompt=PASSAGE, packing=packing), tokenizer, global_batch_size=8, seed=0)
  rows = rows_of(SNLI)
  chosen = [rows[i] for i in data.example_indices(0)]
  ids = lambda text, n: tokenizer(text, truncation=True, max_length=n)["input_ids"]
  want_queries = [ids(QUERY + r["anchor"], 12) for r in chosen]
  want_passages = [ids(PASSAGE + r[c], 16) for r in chosen for c in ("positive", "negative")]
  batch = data.batch(0)
  if packing:
    queries, passages = unpacked_texts(batch, 8), unpacked_texts(batch, 16, first=8)
  else:
    cut = lambda side: [row[mask == 1].tolist() for row, mask in zip(batch[f"{side}_input_ids"],
                                                                     batch[f"{side}_attention_mask"])]
    queries, passages = cut("query"), cut("passage")
  assert queries == want_queries and passages == want_passages
  prompt_ids = tokenizer(QUERY, add_special_tokens=False)["input_ids"]
  assert all(q[1:1 + len(prompt_ids)] == prompt_ids and len(q) <= 12 for q in queries)
  assert any(len(q) == 12 for q in queries)  # the prompt's tokens count against query_max_length


def test_no_prompt_leaves_the_quickstarts_batches_as_they_were(tokenizer):
  """Unset prompts, empty prompts and empty older names give the same bytes, padded and packed, and the
  texts are the file's own."""
  from starbucks_jax.data.srl import TrainData
  from starbucks_jax.training.tasks import read_config
  config = read_config(runpy.run_path(str(REPO / "configs" / "quickstart.py"))["get_config"]())
  assert (config.eval.query_prompt, config.eval.passage_prompt) == ("", "")
  for packing in (False, True):
    plain = dataclasses.replace(config.data, packing=packing)
    empty = dataclasses.replace(plain, query_prompt="", passage_prompt="", query_prefix="", passage_prefix="")
    made = [TrainData(block, tokenizer, global_batch_size=config.batch_size, seed=config.seed)
            for block in (plain, empty)]
    for step in (0, 1):
      a, b = made[0].batch(step), made[1].batch(step)
      assert sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)
  rows = rows_of(SNLI)
  assert made[0].texts(0)[0] == [rows[i]["anchor"] for i in made[0].example_indices(0)]


def test_prompt_settings_are_checked_and_evaluation_defaults_to_the_datas():
  from starbucks_jax.data.srl import DataConfig
  from starbucks_jax.training.config import EvalConfig
  from starbucks_jax.training.defaults import base_config
  from starbucks_jax.training.tasks import read_config
  with pytest.raises(StarbucksError, match=r'data.query_prompt must be a string \(\"\" for none\), got int 5'):
    DataConfig(source=str(SNLI), query_prompt=5)
  with pytest.raises(StarbucksError, match="eval.passage_prompt must be a string"):
    EvalConfig(passage_prompt=["x"])
  values = base_config().to_dict()
  values["data"].update(source=str(SNLI), query_prefix=QUERY, passage_prompt=PASSAGE)  # an older name works
  config = read_config(values)
  assert config.eval.options("mean").query_prompt == QUERY and config.eval.options("mean").passage_prompt == PASSAGE
  values["eval"]["query_prompt"] = ""  # set: kept, even empty
  assert read_config(values).eval.options("mean").query_prompt == ""
  values["data"]["query_prompt"] = 5
  with pytest.raises(StarbucksError, match="data.query_prompt must be a string, got 5"):
    read_config(values)


# --- the export and encode ---

def test_the_export_gives_sentence_transformers_the_runs_prompts(trained, tmp_path):
  from sentence_transformers import SentenceTransformer
  from starbucks_jax.cli.encode import main as encode
  from starbucks_jax.inference.encoder import Encoder
  export = trained / "export"
  assert json.loads((export / "config_sentence_transformers.json").read_text())["prompts"] == PROMPTS
  ours = Encoder.from_pretrained(export)
  assert ours.prompts == PROMPTS == Encoder.from_pretrained(trained).prompts
  model = SentenceTransformer(str(export), device="cpu")
  plain = ours.encode(TEXTS)
  for theirs, prompt in ((model.encode_query(TEXTS), QUERY), (model.encode_document(TEXTS), PASSAGE)):
    np.testing.assert_allclose(ours.encode(TEXTS, prompt=prompt), theirs, atol=1e-5)
    assert np.abs(plain - theirs).max() > 1e-3  # the prompt changed the vectors
  (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
  for model_path, flags in ((trained, ["--prompt-name", "query"]), (export, ["--prompt", QUERY])):
    encode(["--model", str(model_path), "--input", str(tmp_path / "texts.txt"), "--output", str(tmp_path / "q.npy"),
            *flags])
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), model.encode_query(TEXTS), atol=1e-5)


# --- evaluation ---

def prompted_sets(root, query: str, passage: str):
  """An STS file (40 STS-B pairs) and a small BEIR folder (6 DL19 queries, 120 passages), with `query` before
  both sentences and every query and `passage` before every passage."""
  sts = write_jsonl(root / "sts.jsonl", [dict(r, sentence1=query + r["sentence1"], sentence2=query + r["sentence2"])
                                        for r in rows_of(STSB, 40)])
  queries = rows_of(DL19 / "queries.jsonl", 6)
  qrels = [line.split("\t") for line in (DL19 / "qrels" / "test.tsv").read_text().splitlines()[1:]]
  qrels = [q for q in qrels if q[0] in {x["_id"] for x in queries}][:60]
  judged = {d for _, d, _ in qrels}
  corpus = [p for p in rows_of(DL19 / "corpus.jsonl") if p["_id"] in judged][:60]
  corpus += [p for p in rows_of(DL19 / "corpus.jsonl", 200) if p["_id"] not in judged][:120 - len(corpus)]
  kept = {p["_id"] for p in corpus}
  beir = root / "dl19"
  write_jsonl(beir / "queries.jsonl", [dict(q, text=query + q["text"]) for q in queries])
  write_jsonl(beir / "corpus.jsonl", [{"_id": p["_id"], "title": "", "text": passage + (
      f"{p['title']} {p['text']}" if p.get("title") else p["text"])} for p in corpus])
  (beir / "qrels").mkdir()
  (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
      f"{q}\t{d}\t{g}\n" for q, d, g in qrels if d in kept))
  return sts, beir


def evaluate(model, sts, beir, tmp_path, *flags) -> dict:
  from starbucks_jax.cli.evaluate import main
  out = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
  main(["--model", str(model), "--sts", str(sts), "--beir", str(beir), "--pairs", "2:16,4:32", "--output", str(out),
        *flags])
  results = json.loads(out.read_text())
  return {name: results[name] for name in ("sts", "beir")}


def test_evaluate_with_prompts_scores_what_prompted_files_score(trained, spread_dir, tmp_path):
  plain = prompted_sets(tmp_path / "plain", "", "")
  prompted = prompted_sets(tmp_path / "prompted", QUERY, PASSAGE)
  flagged = evaluate(spread_dir, *plain, tmp_path, "--query-prompt", QUERY, "--passage-prompt", PASSAGE)
  assert flagged == evaluate(spread_dir, *prompted, tmp_path)
  assert flagged != evaluate(spread_dir, *plain, tmp_path)
  # A workdir (or its export) trained with prompts is evaluated with them unless told otherwise.
  run_default = evaluate(trained, *plain, tmp_path)
  assert run_default == evaluate(trained, *prompted, tmp_path, "--query-prompt", "", "--passage-prompt", "")
  assert run_default == evaluate(trained / "export", *plain, tmp_path)


def test_mtebs_texts_take_the_prompt_of_their_kind(spread_dir):
  from starbucks_jax.evaluation.evaluator import EvalOptions
  from starbucks_jax.evaluation.mteb_tasks import LayerCache
  from starbucks_jax.inference.encoder import Encoder
  encoder = Encoder.from_pretrained(spread_dir)
  options = EvalOptions(query_prompt=QUERY, passage_prompt=PASSAGE, max_length=64, query_max_length=64,
                        passage_max_length=64)
  cache = LayerCache(encoder, [2], options)
  for kind, prompt in (("query", QUERY), ("document", PASSAGE), ("text", QUERY)):  # STS: the query prompt
    want = encoder.encode_layers([prompt + t for t in TEXTS], layers=[2], max_length=64)[2]
    np.testing.assert_allclose(cache.vectors(TEXTS, kind)[:, 0], want, atol=1e-6)


# --- mining ---

def test_mine_prompts_their_older_names_and_a_workdirs_own(trained, tmp_path):
  from starbucks_jax.cli.mine import main
  train = write_jsonl(tmp_path / "pairs.jsonl", [{"query": r["anchor"], "positive": r["positive"]}
                                                  for r in rows_of(SNLI, 24)])

  def mine(name, model, *flags):
    main(["--model", str(model), "--layer", "2", "--dim", "16", "--train", str(train), "--output",
          str(tmp_path / f"{name}.jsonl"), "--range-min", "0", "--num-negatives", "3", *flags])
    return (tmp_path / f"{name}.jsonl").read_bytes(), json.loads((tmp_path / f"{name}.summary.json").read_text())

  prompts = ["--query-prompt", QUERY, "--passage-prompt", PASSAGE]
  new, summary = mine("new", trained, *prompts)
  assert (summary["query_prompt"], summary["passage_prompt"]) == (QUERY, PASSAGE)
  assert mine("old", trained, "--query-prefix", QUERY, "--passage-prefix", PASSAGE)[0] == new
  default, summary = mine("default", trained)
  assert default == new and (summary["query_prompt"], summary["passage_prompt"]) == (QUERY, PASSAGE)
  assert mine("none", trained, "--query-prompt", "", "--passage-prompt", "")[1]["query_prompt"] == ""
