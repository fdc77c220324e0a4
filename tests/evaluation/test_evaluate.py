"""The evaluation command: STS-B reference figures, exact search against brute force, outputs, errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError

from tests.helpers import REPO
STSB_TEST = REPO / "data" / "quickstart" / "stsb_test.jsonl"
DL19 = REPO / "data" / "beir" / "msmarco-dl19-slice"

# all-MiniLM-L6-v2 untouched, mean pooling, cosine, max length 128: Spearman x100 on STS-B test
# (data/README.md; measured with transformers' PyTorch BertModel).
MINILM_STSB_SPEARMAN = {"1,16": 41.8, "2,32": 41.2, "3,64": 39.6, "4,128": 49.7, "5,256": 63.7, "6,384": 82.0}


@pytest.fixture(scope="module")
def tiny_encoder(tiny_dir):
  from starbucks_jax.inference.encoder import Encoder
  return Encoder.from_pretrained(tiny_dir, max_length=64)


@pytest.fixture(scope="module")
def dl19():
  from starbucks_jax.evaluation.datasets import load_beir
  return load_beir(DL19)


def write_beir(folder: Path, corpus, queries, qrels, *, qrels_header="query-id\tcorpus-id\tscore"):
  """A BEIR folder from ({_id,title,text} dicts, {_id,text} dicts, (qid, docid, grade) triples)."""
  (folder / "qrels").mkdir(parents=True)
  (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
  (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
  if qrels is not None:
    lines = [qrels_header] + [f"{q}\t{d}\t{g}" for q, d, g in qrels]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
  return folder


def small_dl19(folder: Path, num_queries=6, num_passages=300):
  """The first queries of the shipped slice, their judged passages and some others."""
  # split("\n"), not splitlines(): MS MARCO text holds U+0085, which splitlines() would break at.
  rows = lambda name: [json.loads(line) for line in (DL19 / name).read_text().split("\n") if line]
  queries = rows("queries.jsonl")[:num_queries]
  keep = {q["_id"] for q in queries}
  qrels = [line.split("\t") for line in (DL19 / "qrels" / "test.tsv").read_text().splitlines()[1:]]
  qrels = [(q, d, g) for q, d, g in qrels if q in keep][:200]
  judged = {d for _, d, _ in qrels}
  corpus = [p for p in rows("corpus.jsonl") if p["_id"] in judged]
  corpus += [p for p in rows("corpus.jsonl") if p["_id"] not in judged][:num_passages - len(corpus)]
  return write_beir(folder, corpus, queries, qrels)


# --- The reference figures. ---

def test_minilm_stsb_spearman_matches_the_reference_figures(minilm_dir):
  from starbucks_jax.inference.encoder import Encoder
  from starbucks_jax.evaluation.datasets import load_sts
  from starbucks_jax.evaluation.sts import evaluate_sts
  from starbucks_jax.pairs import default_pairs
  encoder = Encoder.from_pretrained(minilm_dir, max_length=128)
  pairs = default_pairs(encoder.config)
  assert pairs == [(1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384)]
  results = evaluate_sts(encoder, load_sts(STSB_TEST), pairs, pooling="mean", batch_size=64)
  spearman = {key: round(m["spearman"], 2) for key, m in results.items()}
  print("STS-B test Spearman x100:", spearman)
  assert spearman.keys() == MINILM_STSB_SPEARMAN.keys()
  for key, expected in MINILM_STSB_SPEARMAN.items():
    assert abs(results[key]["spearman"] - expected) <= 0.1, (key, results[key])
    assert 0 < results[key]["pearson"] <= 100


# --- Exact search against brute force. ---

def brute_force_metrics(queries, passages, beir, similarity):
  """nDCG@10, RR@10 and R@100 from a full numpy score matrix, written out as trec_eval computes them:
  gain = relevance grade with a log2(rank + 1) discount and the ideal ranking from the qrels; relevant
  means grade >= 1; ties in score rank the larger passage id first.

  Also counts the places where float32 rounding could change a metric: two passages of different grades
  less than 1e-6 apart within the top 10 or across rank 100. The comparison needs none."""
  queries, passages = queries.astype(np.float64), passages.astype(np.float64)
  if similarity == "cosine":
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    passages = passages / np.linalg.norm(passages, axis=1, keepdims=True)
  scores = queries @ passages.T
  ndcg, rr, recall, fragile = [], [], [], 0
  for i, qid in enumerate(beir.query_ids):
    top = np.argsort(-scores[i], kind="stable")[:101]
    grade = lambda j: beir.qrels[qid].get(beir.corpus_ids[j], 0)
    for rank in list(range(10)) + [99]:
      a, b = top[rank], top[rank + 1]
      fragile += 0 < scores[i, a] - scores[i, b] < 1e-6 * abs(scores[i, a]) and grade(a) != grade(b)
    ranked = sorted(top[:100], key=lambda j: (scores[i, j], beir.corpus_ids[j]), reverse=True)
    grades = [grade(j) for j in ranked]
    ideal = sorted((g for g in beir.qrels[qid].values() if g > 0), reverse=True)[:10]
    dcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(grades[:10]))
    ndcg.append(dcg / sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal)))
    rr.append(next((1 / (rank + 1) for rank, g in enumerate(grades[:10]) if g >= 1), 0.0))
    recall.append(sum(g >= 1 for g in grades) / sum(g >= 1 for g in beir.qrels[qid].values()))
  return {"ndcg@10": np.mean(ndcg), "mrr@10": np.mean(rr), "recall@100": np.mean(recall)}, fragile


@pytest.fixture(scope="module")
def spread_dir(tmp_path_factory, minilm_dir):
  """tiny_dir's architecture with weights that spread texts out (`helpers.spread_bert`)."""
  from tests.helpers import spread_bert
  return spread_bert(tmp_path_factory.mktemp("spread_bert"), minilm_dir)


@pytest.fixture(scope="module")
def spread_encoder(spread_dir):
  from starbucks_jax.inference.encoder import Encoder
  return Encoder.from_pretrained(spread_dir, max_length=64)


@pytest.fixture(scope="module")
def dl19_vectors(spread_encoder, dl19):
  """The model's query and passage vectors at layers 2 and 4, as evaluate_beir encodes them."""
  encode = lambda texts, length: spread_encoder.encode_layers(texts, layers=(2, 4), pooling="mean",
                                                              max_length=length, show_progress=False)
  return encode(dl19.queries, 32), encode(dl19.passages, 256)


@pytest.mark.parametrize("similarity, chunk_size", [("cosine", 8192), ("cosine", 700), ("dot", 700)])
def test_beir_metrics_agree_with_brute_force(spread_encoder, dl19, dl19_vectors, similarity, chunk_size):
  from starbucks_jax.evaluation.retrieval import evaluate_beir
  pairs = [(2, 16), (4, 32)]
  results = evaluate_beir(spread_encoder, dl19, pairs, pooling="mean", similarity=similarity,
                          chunk_size=chunk_size, show_progress=False)
  queries, passages = dl19_vectors
  assert list(results) == ["2,16", "4,32"]
  for layer, dim in pairs:
    expected, fragile = brute_force_metrics(queries[layer][:, :dim], passages[layer][:, :dim], dl19, similarity)
    assert fragile == 0, "near-ties between different grades: float32 rounding decides these rankings"
    got = results[f"{layer},{dim}"]
    assert got.keys() == expected.keys()
    for metric, value in expected.items():
      assert got[metric] == pytest.approx(value, abs=1e-6), (layer, dim, metric)
    # The model finds relevant passages, so the comparison is not between zeros.
    assert min(got.values()) > 0.02, got


def test_chunked_search_is_exact_search_whatever_the_chunk_size():
  """On vectors whose scores float32 computes exactly (small integers; +-1 entries for cosine, whose unit
  vectors are +-1/4), every chunk size returns numpy's top 100, ties included (lower corpus row first)."""
  from starbucks_jax.evaluation.retrieval import search
  rng = np.random.default_rng(0)
  corpus = rng.integers(-3, 4, (5000, 16)).astype(np.float32)
  queries = rng.integers(-3, 4, (40, 16)).astype(np.float32)
  for similarity in ("dot", "cosine"):
    if similarity == "cosine":
      corpus, queries = np.where(corpus >= 0, 1, -1).astype(np.float32), np.where(queries >= 0, 1, -1).astype(np.float32)
    full = queries.astype(np.float64) @ corpus.astype(np.float64).T / (16 if similarity == "cosine" else 1)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :100]
    for chunk_size in (8192, 5000, 700, 100, 99):
      scores, rows = search(queries, corpus, similarity=similarity, chunk_size=chunk_size)
      np.testing.assert_array_equal(rows, expected, err_msg=f"{similarity}, chunks of {chunk_size}")
      np.testing.assert_array_equal(scores, np.take_along_axis(full, expected, 1))
  # A corpus smaller than k returns it all.
  assert search(queries[:2], corpus[:7], similarity="dot")[1].shape == (2, 7)


def test_dot_and_cosine_rank_differently_on_unnormalised_vectors():
  from starbucks_jax.evaluation.retrieval import search
  queries = np.array([[1.0, 0.0]], np.float32)
  corpus = np.array([[1.0, 0.0], [3.0, 3.0], [0.5, 0.01]], np.float32)
  assert search(queries, corpus, similarity="cosine")[1][0].tolist() == [0, 2, 1]
  assert search(queries, corpus, similarity="dot")[1][0].tolist() == [1, 0, 2]
  with pytest.raises(StarbucksError, match="similarity"):
    search(queries, corpus, similarity="l2")


# --- Pairs. ---

def test_default_and_grid_pairs():
  from starbucks_jax.model.bert import BertConfig
  from starbucks_jax.pairs import default_pairs, grid_pairs, parse_pair_text as parse_pairs
  def config(layers, hidden):
    return BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=8, max_position_embeddings=16)
  assert default_pairs(config(12, 768)) == [(2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768)]
  assert default_pairs(config(6, 384)) == [(1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384)]
  assert default_pairs(config(24, 1024)) == [(4, 32), (8, 64), (12, 128), (16, 256), (20, 512), (24, 1024)]
  assert default_pairs(config(4, 32)) == [(1, 1), (2, 2), (2, 4), (3, 8), (4, 16), (4, 32)]
  assert default_pairs(config(3, 4)) == [(1, 1), (2, 2), (3, 4)]
  assert grid_pairs(config(2, 32)) == [(1, 1), (1, 2), (1, 4), (1, 8), (1, 16), (1, 32),
                                       (2, 1), (2, 2), (2, 4), (2, 8), (2, 16), (2, 32)]
  assert parse_pairs("2:32, 4:64,2:32") == [(2, 32), (4, 64)]
  with pytest.raises(StarbucksError, match="LAYER:DIM"):
    parse_pairs("2x32")


def test_pair_beyond_the_model_is_refused(tiny_encoder, dl19):
  from starbucks_jax.evaluation.run import evaluate_encoder
  with pytest.raises(StarbucksError, match="layer 5 is outside 1..4"):
    evaluate_encoder(tiny_encoder, {"beir": [dl19]}, pairs=[(2, 16), (5, 16)])
  with pytest.raises(StarbucksError, match="dim 64 is outside"):
    evaluate_encoder(tiny_encoder, {"beir": [dl19]}, pairs=[(4, 64)])


def test_command_refuses_a_pair_beyond_the_model_before_loading_anything(tiny_dir, tmp_path):
  """Exit status 2 and one line naming the pair, even though the STS file does not exist: the pairs are
  checked first, against the config alone."""
  result = subprocess.run([sys.executable, "-m", "starbucks_jax.evaluate", "--model", str(tiny_dir),
                           "--sts", str(tmp_path / "missing.jsonl"), "--pairs", "2:16,5:16",
                           "--output", str(tmp_path / "r.json")], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1] == "error: layer 5 is outside 1..4 (the model has 4 layers)"
  assert not (tmp_path / "r.json").exists()


# --- The command's outputs, and a workdir as the model. ---

def make_workdir(model_dir, workdir: Path, step=2):
  """A training workdir as train() writes it: model/ and one Orbax checkpoint of `model_dir`'s weights."""
  import jax
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.runtime import checkpoints
  from starbucks_jax.runtime.workdir import write_model_dir
  from starbucks_jax.training.step import TrainState
  model = load_pretrained(model_dir)
  write_model_dir(workdir, model.config, model_dir, {"pooling": "mean", "max_seq_length": 48})
  state = TrainState(step=np.int32(step), params=model.params, opt_state={"count": np.zeros((), np.int32)},
                     rng=jax.random.key(0), skipped_steps=np.int32(0))
  run = checkpoints.RunCheckpoints(workdir, every_steps=1, keep=2, async_save=False)
  assert run.save(state, step, force=True)
  run.wait()
  return workdir


def test_command_writes_results_table_and_heatmaps_from_a_workdir(spread_dir, tmp_path, capsys):
  from starbucks_jax.cli.evaluate import main
  from starbucks_jax.inference.encoder import Encoder
  load_encoder = Encoder.from_pretrained  # a workdir (newest checkpoint, or step=) or a folder
  workdir = make_workdir(spread_dir, tmp_path / "run")
  # The workdir's encoder is the model it was made from, with the run's pooling and max length.
  encoder = load_encoder(workdir)
  assert (encoder.default_pooling, encoder.max_length) == ("mean", 48)
  texts = ["a man plays a guitar", "two dogs run on the beach"]
  np.testing.assert_allclose(encoder.encode(texts, layer=3, dim=20),
                             Encoder.from_pretrained(spread_dir).encode(texts, layer=3, dim=20, pooling="mean"),
                             atol=1e-6)
  with pytest.raises(StarbucksError, match="no checkpoint at step 7"):
    load_encoder(workdir, step=7)
  with pytest.raises(StarbucksError, match="not one"):
    load_encoder(spread_dir, step=2)

  sts = tmp_path / "sts_small.csv"
  rows = [json.loads(line) for line in STSB_TEST.read_text().splitlines()[:60]]
  sts.write_text("sentence1,sentence2,score\n" + "".join(
      f"\"{r['sentence1']}\",\"{r['sentence2']}\",{r['score']}\n" for r in rows))
  beir = small_dl19(tmp_path / "dl19_small")
  output = tmp_path / "out" / "results.json"
  main(["--model", str(workdir), "--step", "2", "--sts", str(sts), "--beir", str(beir), "--pairs", "1:8,4:32,2:16",
        "--output", str(output), "--chunk-size", "128", "--batch-size", "16"])
  results = json.loads(output.read_text())
  assert list(results) == ["sts", "beir", "mteb"] and results["mteb"] == {}
  assert list(results["sts"]) == ["sts_small"] and list(results["beir"]) == ["dl19_small"]
  for kind, metrics in (("sts", ["spearman", "pearson"]), ("beir", ["ndcg@10", "mrr@10", "recall@100"])):
    by_pair = next(iter(results[kind].values()))
    assert list(by_pair) == ["1,8", "4,32", "2,16"]
    for values in by_pair.values():
      assert list(values) == metrics
      assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
  assert all(0 <= v <= 1 for m in results["beir"]["dl19_small"].values() for v in m.values())

  printed = capsys.readouterr().out.splitlines()
  assert printed[0] == "| data set / metric | (1,8) | (4,32) | (2,16) |"
  assert printed[1] == "|---|---:|---:|---:|"
  labels = [line.split(" | ")[0] for line in printed[2:7]]
  assert labels == ["| sts_small / spearman", "| sts_small / pearson", "| dl19_small / ndcg@10",
                    "| dl19_small / mrr@10", "| dl19_small / recall@100"]
  assert printed[2].split(" | ")[2] == f"{results['sts']['sts_small']['4,32']['spearman']:.2f}"
  for name in ("sts_small", "dl19_small"):
    png = tmp_path / "out" / f"results_{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # The library API gives the same figures, and flattens them for a metrics log.
  from starbucks_jax.evaluation.datasets import load_beir, load_sts
  from starbucks_jax.evaluation.evaluator import EvalOptions
  from starbucks_jax.evaluation.report import flatten_for_metrics
  from starbucks_jax.evaluation.run import evaluate_encoder
  options = EvalOptions(query_max_length=32, passage_max_length=256, batch_size=16, similarity="cosine",
                        chunk_size=128, show_progress=False)
  again = evaluate_encoder(encoder, {"sts": [load_sts(sts)], "beir": [load_beir(beir)]},
                           pairs=[(1, 8), (4, 32), (2, 16)], options=options)
  for kind in ("sts", "beir"):
    for name, by_pair in again[kind].items():
      for key, values in by_pair.items():
        for metric, value in values.items():
          assert value == pytest.approx(results[kind][name][key][metric], abs=1e-9)
  flat = flatten_for_metrics(again)
  assert len(flat) == 3 * 2 + 3 * 3
  assert flat["eval/dl19_small/n4_d32/ndcg@10"] == again["beir"]["dl19_small"]["4,32"]["ndcg@10"]
  assert flat["eval/sts_small/n1_d8/pearson"] == again["sts"]["sts_small"]["1,8"]["pearson"]


def test_packed_evaluation_gives_the_padded_scores(spread_dir, spread_encoder, tmp_path, caplog):
  """`--packing` (training: `eval.packing`) reaches every evaluator's encoding: STS and BEIR give the padded
  scores and MTEB's layer cache the padded vectors, and the encoder logs its packed passes. (The spread
  model: a random model's vectors crowd together, and 1e-6 changes rank near-ties.)"""
  import logging
  from starbucks_jax.cli import evaluate as cli
  from starbucks_jax.evaluation.datasets import load_beir, load_sts
  from starbucks_jax.evaluation.evaluator import EvalOptions
  from starbucks_jax.evaluation.mteb_tasks import LayerCache
  from starbucks_jax.evaluation.run import evaluate_encoder
  sts = tmp_path / "sts.jsonl"  # 300 pairs of STS-B test; their sentences as a small BEIR set
  sts.write_text("\n".join(STSB_TEST.read_text().splitlines()[:300]) + "\n")
  pairs = [json.loads(line) for line in sts.read_text().splitlines()]
  write_beir(tmp_path / "beir", [{"_id": f"d{i}", "title": "", "text": p["sentence1"]} for i, p in enumerate(pairs)],
             [{"_id": f"q{i}", "text": p["sentence2"]} for i, p in enumerate(pairs[:30])],
             [(f"q{i}", f"d{i}", 1) for i in range(30)])
  sets = {"sts": [load_sts(sts)], "beir": [load_beir(tmp_path / "beir")]}
  results, vectors = {}, {}
  for packing in (False, True):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="starbucks_jax.inference.encoder"):
      options = EvalOptions(packing=packing, show_progress=False)
      results[packing] = evaluate_encoder(spread_encoder, sets, pairs=[(2, 16)], options=options)
      vectors[packing] = LayerCache(spread_encoder, [2], options).vectors(["a text", "another, longer text"], "text")
    assert caplog.text.count("packed encoding:") == (4 if packing else 0)  # STS, queries, passages, MTEB
  for evaluator in ("sts", "beir"):
    for name, by_pair in results[False][evaluator].items():
      for metric, value in by_pair["2,16"].items():
        assert abs(results[True][evaluator][name]["2,16"][metric] - value) < 0.01, (evaluator, name, metric)
  np.testing.assert_allclose(vectors[True], vectors[False], atol=1e-5)
  with caplog.at_level(logging.INFO, logger="starbucks_jax.inference.encoder"):
    cli.main(["--model", str(spread_dir), "--sts", str(sts), "--pairs", "2:16", "--output", str(tmp_path / "r.json"),
              "--packing"])
  assert "packed encoding: " in caplog.text and (tmp_path / "r.json").exists()


# --- Bad inputs. ---

CORPUS = [{"_id": "d1", "title": "Title", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}]
QUERIES = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}]


def test_beir_loading(tmp_path):
  from starbucks_jax.evaluation.datasets import load_beir
  beir = load_beir(write_beir(tmp_path / "ok", CORPUS, QUERIES, [("q2", "d1", 1), ("q2", "d2", 0)]))
  assert beir.name == "ok"
  assert beir.passages == ["Title one", "two"]
  assert (beir.query_ids, beir.queries) == (["q2"], ["second"])  # q1 has no judgements
  assert beir.qrels == {"q2": {"d1": 1, "d2": 0}}


@pytest.mark.parametrize("case, message", [
    ("qrels missing", "has no qrels file qrels/test.tsv"),
    ("query absent", r"judges 1 query id\(s\) absent from .*queries.jsonl, e.g. 'q9'"),
    ("empty corpus", "corpus .*corpus.jsonl is empty"),
    ("corpus lacks text", r"corpus.jsonl, line 2: no field 'text'"),
    ("qrels lacks column", "has no column 'corpus-id'"),
    ("no folder", "does not exist"),
])
def test_bad_beir_folders_are_refused(tmp_path, case, message):
  from starbucks_jax.evaluation.datasets import load_beir
  folder = tmp_path / "bad"
  qrels = [("q1", "d1", 1)]
  if case == "qrels missing":
    write_beir(folder, CORPUS, QUERIES, None)
  elif case == "query absent":
    write_beir(folder, CORPUS, QUERIES, qrels + [("q9", "d2", 1)])
  elif case == "empty corpus":
    write_beir(folder, [], QUERIES, qrels)
  elif case == "corpus lacks text":
    write_beir(folder, [CORPUS[0], {"_id": "d3", "body": "x"}], QUERIES, qrels)
  elif case == "qrels lacks column":
    write_beir(folder, CORPUS, QUERIES, qrels, qrels_header="query-id\tdoc\tscore")
  with pytest.raises(StarbucksError, match=message):
    load_beir(folder)


def test_sts_loading_and_bad_sts_files(tmp_path):
  from starbucks_jax.evaluation.datasets import load_sts
  good = tmp_path / "good.tsv"
  good.write_text("sentence1\tsentence2\tscore\na\tb\t1.5\nc\td\t4\n")
  sts = load_sts(good)
  assert (sts.name, sts.sentence1, sts.sentence2, sts.scores.tolist()) == ("good", ["a", "c"], ["b", "d"], [1.5, 4.0])
  assert len(load_sts(STSB_TEST)) == 1379

  lacking = tmp_path / "lacking.jsonl"
  lacking.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": 1.0}) + "\n")
  with pytest.raises(StarbucksError, match=r"lacking.jsonl has no column 'score'"):
    load_sts(lacking)
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  with pytest.raises(StarbucksError, match="empty.csv has no rows"):
    load_sts(empty)
  not_a_number = tmp_path / "nan.csv"
  not_a_number.write_text("sentence1,sentence2,score\na,b,high\n")
  with pytest.raises(StarbucksError, match="row 1: score 'high' is not a number"):
    load_sts(not_a_number)
  with pytest.raises(StarbucksError, match="does not exist"):
    load_sts(tmp_path / "missing.jsonl")


def test_command_line_errors(tiny_dir, tmp_path):
  from starbucks_jax.cli.evaluate import main
  out = str(tmp_path / "r.json")
  with pytest.raises(StarbucksError, match="nothing to evaluate"):
    main(["--model", str(tiny_dir), "--output", out])
  with pytest.raises(StarbucksError, match="is a folder"):
    main(["--model", str(tiny_dir), "--sts", str(STSB_TEST), "--output", str(tmp_path)])
  with pytest.raises(StarbucksError, match="two data sets are named 'stsb_test'"):
    main(["--model", str(tiny_dir), "--sts", str(STSB_TEST), str(STSB_TEST), "--pairs", "1:8", "--output", out])
  with pytest.raises(StarbucksError, match="--chunk-size must be at least 1"):
    main(["--model", str(tiny_dir), "--sts", str(STSB_TEST), "--chunk-size", "0", "--output", out])
