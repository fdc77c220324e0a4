"""Hard-negative mining: the negatives are numpy's brute-force ranking with the positives left out, the
range and margins hold, the seeded draw repeats, FAISS agrees with exact search, `train` reads the
groups, and bad input is one error before any encoding."""

import json
from pathlib import Path

import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from tests.helpers import spread_bert

LAYER, DIM = 2, 16
QUERY_LENGTH, PASSAGE_LENGTH = 32, 64


@pytest.fixture(scope="module")
def spread_dir(tmp_path_factory, minilm_dir):
  return spread_bert(tmp_path_factory.mktemp("spread_bert"), minilm_dir)


@pytest.fixture(scope="module")
def encoder(spread_dir):
  from starbucks_jax.inference.encoder import Encoder
  return Encoder.from_pretrained(spread_dir)


@pytest.fixture(scope="module")
def data(tmp_path_factory, sentences):
  """A corpus of 60 sentences (d0..d59, plus "dup3": d3's text under another id) and 10 training queries
  with positive d<i>; query 5's text appears twice, the second time with positive d10."""
  root = tmp_path_factory.mktemp("mining")
  corpus = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(sentences[:60])]
  corpus.append({"_id": "dup3", "title": "", "text": sentences[3]})
  queries = sentences[60:70]
  groups = [{"query_id": f"q{i}", "query": q, "positive_passages": [{"docid": f"d{i}", "title": "", "text": sentences[i]}],
             "negative_passages": []} for i, q in enumerate(queries)]
  groups.append({"query_id": "q5b", "query": queries[5],
                 "positive_passages": [{"docid": "d10", "title": "", "text": sentences[10]}], "negative_passages": []})
  def write(name, rows):
    (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / name
  return {"root": root, "corpus": write("corpus.jsonl", corpus), "groups": write("groups.jsonl", groups),
          "pairs": write("pairs.jsonl", [{"query": g["query"], "positive": g["positive_passages"][0]["text"]}
                                         for g in groups]),
          "scored": write("scored.jsonl", [{"sentence1": q, "sentence2": q, "score": 1.0} for q in queries]),
          "empty": write("empty.jsonl", []), "sentences": sentences}


def mine(encoder, data, source="groups", corpus=True, **options):
  from starbucks_jax.evaluation.datasets import load_corpus
  from starbucks_jax.mining import mine as mine_lib
  from starbucks_jax.mining.select import SelectOptions
  from starbucks_jax.mining.training_queries import read_training_queries
  settings = {k: options.pop(k) for k in ("faiss", "nprobe", "similarity") if k in options}
  queries = read_training_queries(str(data[source]))
  corpus = load_corpus(data["corpus"]) if corpus else mine_lib.corpus_from_training(queries)
  settings = mine_lib.MineSettings(layer=LAYER, dim=DIM, query_max_length=QUERY_LENGTH,
                                   passage_max_length=PASSAGE_LENGTH, **settings)
  return mine_lib.mine_negatives(encoder, queries, corpus, settings, SelectOptions(**options)), queries, corpus


def brute_force(encoder, queries, corpus):
  """[queries, corpus] float64 cosine scores of the same vectors, and each query's excluded rows."""
  q = encoder.encode([x.text for x in queries], layer=LAYER, dim=DIM, normalize=True, max_length=QUERY_LENGTH)
  c = encoder.encode(corpus.passages(), layer=LAYER, dim=DIM, normalize=True, max_length=PASSAGE_LENGTH)
  scores = q.astype(np.float64) @ c.astype(np.float64).T
  positives = {}
  for x in queries:  # every row with the same text shares its positives
    positives.setdefault(x.text, set()).update(p.text for p in x.positives)
  excluded = [{j for j, text in enumerate(corpus.texts) if text in positives[x.text]} for x in queries]
  return scores, excluded


def ranked(scores, excluded):
  return [j for j in np.argsort(-scores, kind="stable") if j not in excluded]


def same_ranking(got, expected, scores):
  """Equal lists of corpus rows, except that rows whose float64 scores are within float32 rounding
  (1e-6 for cosines near 1) may swap: the device computes the scores in float32."""
  assert len(got) == len(expected)
  np.testing.assert_allclose(scores[got], scores[expected], atol=1e-6, rtol=0)
  return sum(a != b for a, b in zip(got, expected))


def negative_ids(result):
  return [[p["docid"] for p in g["negative_passages"]] for g in result.groups]


@pytest.mark.parametrize("margins", [{}, {"margin": 0.001}, {"relative_margin": 0.002}])
def test_top_negatives_are_numpys_ranking_without_the_positives(encoder, data, margins):
  result, queries, corpus = mine(encoder, data, sampling="top", depth=40, range_min=2, num_negatives=7, **margins)
  scores, excluded = brute_force(encoder, queries, corpus)
  swapped = 0
  for i, x in enumerate(queries):
    order = ranked(scores[i], excluded[i])[:40]
    positive = min(scores[i][corpus.ids.index(p.docid)] for p in x.positives)
    allowed = [j for rank, j in enumerate(order, 1) if rank > 2
               and scores[i][j] <= positive - margins.get("margin", -np.inf) and
               scores[i][j] <= positive * (1 - margins.get("relative_margin", -np.inf))]
    swapped += same_ranking([corpus.ids.index(d) for d in negative_ids(result)[i]], allowed[:7], scores[i])
  assert swapped <= 2, f"{swapped} negatives differ from numpy's (within rounding)"
  got = [n for row in negative_ids(result) for n in row]
  assert "dup3" not in negative_ids(result)[3] and "d3" not in negative_ids(result)[3]  # by text, not only id
  assert not {"d5", "d10"} & set(negative_ids(result)[5] + negative_ids(result)[10])  # a repeated query
  if margins:
    assert result.summary["candidates_dropped_by_margin"] > 0
    assert len(got) < 7 * len(queries) or result.summary["queries_with_fewer"] == 0
  else:
    assert len(got) == 7 * len(queries) and result.summary["queries_with_fewer"] == 0


def test_random_draws_are_seeded_in_range_and_independent_of_the_search_blocks(encoder, data, monkeypatch):
  options = dict(depth=30, range_min=5, range_max=20, num_negatives=6, seed=3)
  first, queries, corpus = mine(encoder, data, **options)
  again = mine(encoder, data, **options)[0]
  from starbucks_jax.mining import search
  monkeypatch.setattr(search, "QUERY_BLOCK", 3)  # other blocks, and a padded last one
  blocked = mine(encoder, data, **options)[0]
  other_seed = mine(encoder, data, **{**options, "seed": 4})[0]
  assert negative_ids(first) == negative_ids(again) == negative_ids(blocked)
  assert negative_ids(first) != negative_ids(other_seed)
  scores, excluded = brute_force(encoder, queries, corpus)
  draws = set()
  for i, ids in enumerate(negative_ids(first)):
    order = [corpus.ids[j] for j in ranked(scores[i], excluded[i])]
    ranks = [order.index(doc) + 1 for doc in ids]
    # Ranks by float64 scores; the float32 search may swap neighbours closer than rounding.
    window = {r for r in range(1, 40) if abs(scores[i][corpus.ids.index(order[r - 1])] -
                                             scores[i][corpus.ids.index(order[4 if r <= 5 else 19])]) > 1e-6}
    assert len(ids) == 6 and all(5 < r <= 20 or r not in window for r in ranks), (i, ranks)
    draws.add(tuple(ranks))
  assert len(draws) > 1, "every query drew the same ranks"


def test_pairs_mined_from_their_own_passages(encoder, data):
  """Without a corpus, the training file's positives are the corpus; a query never gets its own."""
  result, queries, corpus = mine(encoder, data, source="pairs", corpus=False, range_min=0, num_negatives=3)
  assert corpus.ids == [f"p{i}" for i in range(11)]  # the positives d0..d9 and d10, each once
  for group, x in zip(result.groups, queries):
    own = {p.text for y in queries if y.text == x.text for p in y.positives}
    texts = [p["text"] for p in group["negative_passages"]]
    assert len(texts) == 3 and not own & set(texts)
    assert group["positive_passages"] == [{"docid": None, "title": "", "text": x.positives[0].text}]


def test_faiss_flat_index_gives_the_exact_searchs_negatives(encoder, data):
  pytest.importorskip("faiss")
  exact = mine(encoder, data, sampling="top", depth=30, range_min=1)[0]
  flat = mine(encoder, data, sampling="top", depth=30, range_min=1, faiss="Flat")[0]
  assert negative_ids(flat) == negative_ids(exact)
  ivf = mine(encoder, data, sampling="top", depth=30, range_min=1, faiss="IVF4,Flat", nprobe=4)[0]
  assert negative_ids(ivf) == negative_ids(exact)  # every list probed: exact again


def run_mine(data, model, *args):
  from starbucks_jax.cli.mine import main
  main(["--model", str(model), "--layer", str(LAYER), "--dim", str(DIM), "--passage-max-length",
        str(PASSAGE_LENGTH), *map(str, args)])


def test_the_command_writes_groups_train_reads(encoder, data, spread_dir, tmp_path, tokenizer, datasets_cache):
  out = tmp_path / "mined.jsonl"
  run_mine(data, spread_dir, "--train", data["groups"], "--corpus", data["corpus"], "--output", out,
           "--range-min", 2, "--num-negatives", 5)
  groups = [json.loads(line) for line in out.read_text().splitlines()]
  summary = json.loads((tmp_path / "mined.summary.json").read_text())
  assert [g["query_id"] for g in groups] == [f"q{i}" for i in range(10)] + ["q5b"]
  assert all(len(g["negative_passages"]) == 5 for g in groups)
  assert summary["queries"] == 11 and summary["distinct_queries"] == 10 and summary["corpus"] == 61
  assert summary["scores"]["negatives"]["count"] == 55 and summary["layer"] == LAYER and summary["dim"] == DIM
  # The same command again gives the same bytes (with --overwrite); without it, the file is kept. (Packed
  # encoding is not compared byte for byte: its vectors are the padded ones to about 2e-6, which can swap two
  # near-tied negatives; tests/inference/test_encode.py holds the vectors.)
  before = out.read_bytes()
  with pytest.raises(StarbucksError, match="exists; give another --output or --overwrite"):
    run_mine(data, spread_dir, "--train", data["groups"], "--corpus", data["corpus"], "--output", out)
  run_mine(data, spread_dir, "--train", data["groups"], "--corpus", data["corpus"], "--output", out,
           "--range-min", 2, "--num-negatives", 5, "--overwrite")
  assert out.read_bytes() == before

  from starbucks_jax.data.srl import DataConfig, TrainData
  train = TrainData(DataConfig(source=str(out), train_group_size=4), tokenizer, global_batch_size=11, seed=0)
  _, passages, _ = train.texts(0)
  by_query = {g["query"]: g for g in groups}
  queries = train.texts(0)[0]
  for i, query in enumerate(queries):
    mined = {p["text"] for g in groups if g["query"] == query for p in g["negative_passages"]}
    assert set(passages[4 * i + 1:4 * i + 4]) <= mined, query
  assert len(by_query) == 10


@pytest.mark.parametrize("args, message", [
    (["--layer", 5], "layer 5 is outside 1..4"),
    (["--dim", 64], "dim 64 is outside 1..32"),
    (["--train", "scored"], "scored data has no positives to mine"),
    (["--corpus", "empty"], "corpus .*empty.jsonl is empty"),
    (["--corpus", "missing"], "corpus .*missing.jsonl does not exist"),
    (["--corpus", "strangers"], "none of the 11 positives is in the corpus"),
    (["--range-max", 300], "--range-max must be above --range-min .* and at most --depth"),
    (["--range-min", 200], "--range-min 200 leaves no rank"),
    (["--margin", -1], "--margin must be a number of at least 0"),
    (["--relative-margin", 1.5], "--relative-margin must be below 1"),
    (["--num-negatives", 0], "--num-negatives must be an integer of at least 1"),
    (["--faiss", "NotAnIndex"], "--faiss 'NotAnIndex': FAISS cannot build"),
    (["--nprobe", 4], "--nprobe applies to a --faiss index"),
    (["--output", "groups"], "is the training file --train"),
])
def test_bad_input_is_one_error_before_any_encoding(args, message, data, spread_dir, tmp_path, monkeypatch):
  if "--faiss" in args:
    pytest.importorskip("faiss")
  (data["root"] / "strangers.jsonl").write_text(json.dumps({"_id": "x1", "text": "nothing like it"}) + "\n")
  names = {"scored": data["scored"], "empty": data["empty"], "groups": data["groups"],
           "missing": data["root"] / "missing.jsonl", "strangers": data["root"] / "strangers.jsonl"}
  args = [names.get(a, a) for a in args]
  flags = dict(zip(args[::2], args[1::2]))
  from starbucks_jax.inference import encoder as encoder_lib
  monkeypatch.setattr(encoder_lib.Encoder, "encode_layers", lambda *a, **k: pytest.fail("encoded"))
  out = flags.pop("--output", tmp_path / "out.jsonl")
  flags = {"--train": data["groups"], "--corpus": data["corpus"], **flags}
  with pytest.raises(StarbucksError, match=message):
    run_mine(data, spread_dir, *[x for pair in flags.items() for x in pair], "--output", out, "--overwrite")
  assert json.loads(Path(data["groups"]).read_text().splitlines()[0])["query_id"] == "q0"
