"""Query pipeline stages, each alone: parser (fuzzed), builder, fusion, shaping, rerank slot, results."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch.errors import BadQueryError, NoRerankerError
from mmsearch.search.builder import QueryBuilder
from mmsearch.search.calibrate import Chance, kind_chance
from mmsearch.search.fuse import EXACT_BOOST, RELATIVE_VECTOR_WEIGHT, above_chance, fuse
from mmsearch.search.language import QueryTerm, parse_query
from mmsearch.search.rerank import DROP_REASON, Reranker, rerank_stage
from mmsearch.search.retrieve import leg_table
from mmsearch.search.rows import Rows, looks_like_identifier
from mmsearch.search.shape import shape
from mmsearch.search.types import MAX_K, Query, RerankSpec, Results, SearchResult


# -- the string language ----------------------------------------------------------------------
@settings(derandomize=True, max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_parser_fuzz_returns_terms_or_bad_query(text: str) -> None:
    try:
        terms = parse_query(text)
    except BadQueryError:
        return
    assert terms and all(isinstance(t, QueryTerm) for t in terms)
    assert all(t.kind in ("text", "image", "url") for t in terms)
    assert any(t.weight > 0 for t in terms)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ['"', "'", " + ", " - ", "2:", "-1:", "a.jpg", "http://x/y.png", "red", " "]
        ),
        max_size=12,
    )
)
def test_parser_fuzz_on_its_own_syntax(parts: list[str]) -> None:
    text = "".join(parts)
    try:
        parse_query(text)
    except BadQueryError:
        pass


def test_literal_and_builder_make_the_same_query_as_the_parser() -> None:
    title = "Levi's 501 - slim fit"
    assert [t.weight for t in parse_query(title)] == [1.0, -1.0]  # the language splits it...
    assert parse_query(title, literal=True) == [
        QueryTerm(1.0, "text", title)
    ]  # ...literal does not
    built = QueryBuilder().text("red dress", weight=2).image("ref.jpg").minus("stripes").to_query()
    parsed = QueryBuilder().parse('"2:red dress" + ref.jpg - "stripes"').to_query()
    assert built == parsed
    q = (
        QueryBuilder()
        .text(title)
        .where(price__lt=20, colour=["red", "blue"])
        .group_by("sku")
        .limit(7)
        .to_query()
    )
    assert q.terms == (QueryTerm(1.0, "text", title),)
    assert {(c.column, c.op) for c in q.where} == {("price", "<"), ("colour", "in")}
    assert (q.group_by, q.k) == ("sku", 7)
    url = QueryBuilder().image("https://example.com/a.png").to_query()
    assert url.terms[0].kind == "url"


@pytest.mark.parametrize(
    "change",
    [{"k": 0}, {"k": MAX_K + 1}, {"k": True}, {"offset": -1}, {"kind": "video"}, {"mode": "fuzzy"},
     {"fusion": "max"}, {"alpha": 1.5}, {"dedup": 0.0}, {"rerank": RerankSpec(depth=0)}],
)  # fmt: skip
def test_query_validation(change: dict) -> None:
    base = Query(terms=(QueryTerm(1.0, "text", "red"),))
    assert base.validated() is base
    with pytest.raises(BadQueryError):
        base.with_(**change).validated()
    with pytest.raises(BadQueryError):
        QueryBuilder().where(price__around=3)


# -- fusion ---------------------------------------------------------------------------------
def _leg(ids: list[int], scores: list[float], kind: str, name: str) -> pa.Table:
    return leg_table(np.asarray(ids, np.int64), np.asarray(scores, np.float32), kind, name)


def test_single_leg_keeps_its_scores() -> None:
    out = fuse([_leg([5, 3, 9], [0.9, 0.8, 0.1], "image", "vector:image")])
    assert out.column("id").to_pylist() == [5, 3, 9]
    assert out.column("score").to_pylist() == pytest.approx([0.9, 0.8, 0.1])
    assert out.column("similarity").to_pylist() == pytest.approx([0.9, 0.8, 0.1])


def test_rrf_rewards_agreement_and_ranks_kinds_alike() -> None:
    vec_img = _leg([1, 2, 3], [0.3, 0.2, 0.1], "image", "vector:image")
    vec_txt = _leg([10, 11, 12], [0.99, 0.98, 0.97], "text", "vector:text")  # higher raw cosines
    lex_txt = _leg([12, 11], [7.0, 3.0], "text", "lexical:text")
    out = fuse([vec_img, vec_txt, lex_txt], method="rrf")
    ids = out.column("id").to_pylist()
    assert ids.index(12) < ids.index(11) < ids.index(10)  # within a kind, agreement wins
    # Images (no lexical leg) are scaled to the texts' two legs: the kinds interleave
    # instead of every caption the words matched coming before the first image.
    assert ids == [1, 12, 2, 11, 3, 10]  # 2 and 11 tie (2/62): the lower id first
    scores = dict(zip(ids, out.column("score").to_pylist(), strict=True))
    assert scores[1] == pytest.approx(2 / 61) and scores[12] == pytest.approx(1 / 63 + 1 / 61)
    assert out.column("legs").to_pylist()[1] == "lexical:text,vector:text"
    lex_img = _leg([3], [2.0], "image", "lexical:image")  # both kinds have both legs: no scaling
    both = fuse([vec_img, vec_txt, lex_txt, lex_img], method="rrf")
    got = dict(zip(both.column("id").to_pylist(), both.column("score").to_pylist(), strict=True))
    assert got[1] == pytest.approx(1 / 61) and got[3] == pytest.approx(1 / 63 + 1 / 61)


def test_weighted_fusion_and_exact_boost() -> None:
    vec = _leg([1, 2], [0.9, 0.1], "text", "vector:text")
    lex = _leg([2, 3], [10.0, 5.0], "text", "lexical:text")
    out = fuse([vec, lex], method="weighted", alpha=0.7)
    got = dict(zip(out.column("id").to_pylist(), out.column("score").to_pylist(), strict=True))
    assert got == pytest.approx({1: 0.7, 2: 0.3, 3: 0.0})
    exact = pa.table({"id": pa.array([3], pa.int64()), "kind": ["text"], "score": pa.array([1.0], pa.float32()),
                      "rank": pa.array([1], pa.int32()), "leg": ["exact"]})  # fmt: skip
    for method in ("rrf", "weighted", "relative"):
        boosted = fuse([vec, lex, exact], method=method)
        assert boosted.column("id")[0].as_py() == 3 and boosted.column("exact")[0].as_py()
        scores = boosted.column("score").to_pylist()
        assert scores[0] >= EXACT_BOOST and scores[0] > max(scores[1:])


def _softplus(x: float) -> float:
    return float(np.log1p(np.exp(x)))


def test_relative_fusion_leg_at_chance_adds_nothing() -> None:
    """A vector leg no better than chance (a brand word the model never learned) adds
    about the same little to every hit, so the words decide; the same leg above chance
    lifts its hits by how far."""
    chance = {"image": Chance(level=0.70, scale=0.05, floor=0.75)}
    lex = _leg([7, 8, 9], [4.0, 4.0, 2.0], "image", "lexical:image")  # 7, 8: the brand word
    at_chance = _leg([1, 2, 9, 8], [0.70, 0.69, 0.65, 0.60], "image", "vector:image")
    out = fuse([at_chance, lex], method="relative", chance=chance)
    got = dict(zip(out.column("id").to_pylist(), out.column("score").to_pylist(), strict=True))
    w = RELATIVE_VECTOR_WEIGHT
    assert got == pytest.approx(
        {
            7: 1.0,
            8: 1.0 + w * _softplus(-2),
            9: 0.5 + w * _softplus(-1),
            1: w * _softplus(0),
            2: w * _softplus(-0.2),
        }  # fmt: skip
    )
    assert out.column("id").to_pylist()[:3] == [8, 7, 9]  # the brand's items first
    assert max(got[1], got[2]) < 0.5 * min(got[7], got[8])  # chance hits: far below
    # RRF on the same legs puts the vector leg's chance hits among the brand's items.
    rrf = fuse([at_chance, lex], method="rrf").column("id").to_pylist()
    assert rrf.index(1) < rrf.index(7)
    # Above chance: 2 stands 4 spreads above the level, 9 one: they rise, in that order.
    above = _leg([2, 9, 8], [0.90, 0.75, 0.60], "image", "vector:image")
    out = fuse([above, lex], method="relative", chance=chance)
    got = dict(zip(out.column("id").to_pylist(), out.column("score").to_pylist(), strict=True))
    assert got[2] == pytest.approx(w * _softplus(4)) and got[9] == pytest.approx(
        0.5 + w * _softplus(1)
    )
    ramp = above_chance(np.array([0.5, 0.7, 0.8, 1.0]), chance["image"])
    assert list(ramp) == pytest.approx([_softplus(-4), np.log(2), _softplus(2), _softplus(6)])
    assert ramp[0] < 0.02 and ramp[-1] == pytest.approx(6, abs=0.01)  # ~0 under, ~height above
    # Without a chance level the leg's own worst hit and spread stand in for it.
    fallback = above_chance(np.array([0.5, 0.7, 0.9]), None)
    assert list(fallback) == pytest.approx([np.log(2), _softplus(0.5), _softplus(1)])


def test_relative_fusion_ranks_kinds_alike() -> None:
    chance = {"image": Chance(0.2, 0.1, 0.3), "text": Chance(0.8, 0.05, 0.9)}
    vec_img = _leg([1, 2], [0.4, 0.3], "image", "vector:image")  # 2 and 1 spreads up
    vec_txt = _leg([10, 11], [0.9, 0.85], "text", "vector:text")  # 2 and 1 spreads up
    lex_txt = _leg([11], [3.0], "text", "lexical:text")
    out = fuse([vec_img, vec_txt, lex_txt], method="relative", chance=chance)
    got = dict(zip(out.column("id").to_pylist(), out.column("score").to_pylist(), strict=True))
    w = RELATIVE_VECTOR_WEIGHT
    two, one = _softplus(2), _softplus(1)
    # Each kind relative to its own best: heights above two kinds' chance levels do not
    # compare, so both kinds' best hits score 1 (the texts' best has the word too).
    assert got == pytest.approx({1: 1.0, 2: one / two, 10: w * two / (1 + w * one), 11: 1.0})


def test_chance_levels_from_probes() -> None:
    top = np.array([[0.9, 0.8, 0.5], [0.7, 0.6, 0.6], [0.8, 0.7, 0.4]], np.float32)
    got = kind_chance({"image": top, "text": top[:, :1], "none": np.zeros((0, 3))})
    assert got["image"].level == pytest.approx(0.8) and got["image"].scale == pytest.approx(0.4)
    assert got["image"].floor == pytest.approx(np.percentile([0.9, 0.7, 0.8], 95))
    assert got["text"].scale > 0 and "none" not in got


# -- shaping --------------------------------------------------------------------------------
def _candidates(
    n: int, *, dup_of: dict[int, int] | None = None, skus: list[str | None] | None = None
) -> pa.Table:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, 8)).astype(np.float32)
    for i, j in (dup_of or {}).items():
        vecs[i] = vecs[j] + 0.001
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    metas = [None if s is None else f'{{"sku": "{s}"}}' for s in (skus or [None] * n)]
    return pa.table(
        {
            "id": pa.array(np.arange(100, 100 + n), pa.int64()),
            "kind": ["image"] * n,
            "score": pa.array(np.linspace(0.9, 0.1, n)),
            "similarity": pa.array(np.linspace(0.9, 0.1, n).astype(np.float32)),
            "exact": [False] * n,
            "legs": ["vector:image"] * n,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), 8),
            "uri": [f"u{i}" for i in range(n)],
            "text": [None] * n,
            "metadata": pa.array(metas, pa.string()),
        }
    )


def test_group_by_dedup_min_score_and_paging() -> None:
    q = Query(terms=(QueryTerm(1.0, "text", "x"),), k=3)
    skus = ["A", "A", "B", None, "B", "C", "D"]
    grouped = shape(_candidates(7, skus=skus), q.with_(group_by="sku"))
    assert grouped.table.column("id").to_pylist() == [100, 102, 103]
    assert grouped.groups == [[101], [104], []] and grouped.available == 5
    page2 = shape(_candidates(7, skus=skus), q.with_(group_by="sku", offset=3))
    assert page2.table.column("id").to_pylist() == [105, 106]
    folded = shape(_candidates(5, dup_of={2: 0, 4: 0}), q.with_(dedup=0.97, k=10))
    assert folded.table.column("id").to_pylist() == [100, 101, 103]
    assert folded.duplicates == [[102, 104], [], []]
    cut = shape(_candidates(5), q.with_(min_score=0.5, k=10))
    assert cut.table.column("id").to_pylist() == [100, 101, 102] and cut.dropped_by_cutoff == 2
    nothing = shape(_candidates(5), q, floors={"image": 0.95})
    assert nothing.table.num_rows == 0 and nothing.dropped_by_cutoff == 5
    assert shape(_candidates(5), q, floors={"image": 0.85}).table.num_rows == 3


# -- rerank slot ----------------------------------------------------------------------------
class ReverseReranker:
    """Scores candidates by reversed retrieval order (enough to see the slot reorder them)."""

    def rerank(self, query: Query, candidates: pa.Table) -> pa.Table:
        assert {"id", "uri", "kind", "text", "score"} <= set(candidates.column_names)
        n = candidates.num_rows
        return candidates.set_column(
            candidates.schema.get_field_index("score"),
            "score",
            pa.array(np.arange(n, dtype=np.float64) / n),
        )


def test_rerank_slot() -> None:
    assert isinstance(ReverseReranker(), Reranker)
    q = Query(terms=(QueryTerm(1.0, "text", "x"),), k=2, rerank=RerankSpec(depth=4))
    with pytest.raises(NoRerankerError, match="reranker"):
        rerank_stage(None, q, _candidates(6))
    out = rerank_stage(ReverseReranker(), q, _candidates(6)).table
    assert out.column("id").to_pylist() == [103, 102, 101, 100]  # depth 4, re-sorted
    assert "retrieval_score" in out.column_names
    assert out.column("score_kind").to_pylist() == ["itm"] * 4
    blended = rerank_stage(
        ReverseReranker(), q.with_(rerank=RerankSpec(depth=4, blend=0.5)), _candidates(6)
    ).table
    assert blended.column("score_kind").to_pylist() == ["blend"] * 4
    kept = rerank_stage(
        ReverseReranker(), q.with_(rerank=RerankSpec(depth=4, min_match=0.5)), _candidates(6)
    ).table
    assert kept.column("id").to_pylist() == [103, 102]
    assert rerank_stage(None, q.with_(rerank=None), _candidates(3)).table.num_rows == 3


class GoneReranker:
    """Marks the first candidate's file as gone (``drop_reason``) and scores the rest 0.2."""

    def rerank(self, query: Query, candidates: pa.Table) -> pa.Table:
        n = candidates.num_rows
        reasons = ["vanished since indexing"] + [None] * (n - 1)
        scored = candidates.set_column(
            candidates.schema.get_field_index("score"), "score", pa.array([0.2] * n)
        )
        return scored.append_column(DROP_REASON, pa.array(reasons, pa.string()))


def test_rerank_stage_reports_dropped_candidates_and_why_nothing_is_left() -> None:
    q = Query(terms=(QueryTerm(1.0, "text", "x"),), k=2, rerank=RerankSpec(depth=3, blend=1.0))
    out = rerank_stage(GoneReranker(), q, _candidates(6))
    assert out.table.column("id").to_pylist() == [101, 102] and out.reason is None
    assert DROP_REASON not in out.table.column_names
    assert [(d.id, d.reason) for d in out.dropped] == [(100, "vanished since indexing")]
    strict = q.with_(rerank=RerankSpec(depth=3, min_match=0.5))
    empty = rerank_stage(GoneReranker(), strict, _candidates(6))
    assert empty.table.num_rows == 0 and len(empty.dropped) == 1
    assert empty.reason == (
        "no good match: no candidate reached match probability 0.50 (best 0.20 among 2 re-ranked)"
    )
    with pytest.raises(BadQueryError, match="min_match"):
        q.with_(rerank=RerankSpec(min_match=1.5)).validated()


# -- rows and results -----------------------------------------------------------------------
def test_identifiers() -> None:
    assert looks_like_identifier("SKU-00042") and looks_like_identifier("00042")
    assert not looks_like_identifier("red dress") and not looks_like_identifier("circle")
    rows = Rows(
        pa.table(
            {
                "id": pa.array([3, 1, 2, 4], pa.int64()),
                "uri": ["c", "a", "b", "d"],
                "kind": ["text", "image", "image", "text"],
                "text": [None] * 4,
                "metadata": ['{"sku": "SKU-00042"}', '{"sku": "SKU-00042"}', '{"sku": "SKU-00043"}',
                             '{"sku": "SKU-10042"}'],
            }
        )
    )  # fmt: skip
    assert rows.identifier_ids("sku-00042").tolist() == [1, 3]
    assert rows.identifier_ids("00043").tolist() == [2]  # a unique token names its SKU
    assert rows.identifier_ids("42").tolist() == []  # not a whole token
    assert rows.identifier_ids("SKU").tolist() == []  # not an identifier


def test_results_export() -> None:
    hit = SearchResult(rank=1, id=7, uri="/x.png", kind="image", text=None, score=0.5, metadata={"sku": "A"},
                       cosine=0.5, group=(8, 9), score_kind="cosine")  # fmt: skip
    res = Results([hit], timings={"encode": 0.01}, reason=None, mode="vector")
    assert set(res.timings) == {
        "encode",
        "retrieve",
        "fuse",
        "filter",
        "rescore",
        "rerank",
        "shape",
    }
    assert res.to_list()[0]["group"] == [8, 9]
    assert res.to_list()[0]["score_kind"] == "cosine" and res.to_list()[0]["cosine"] == 0.5
    assert res.score_kind == "cosine" and Results().score_kind is None
    table = res.to_arrow()
    assert table.column("id").to_pylist() == [7] and table.column("group").to_pylist() == [[8, 9]]
    assert list(res.to_pandas()["uri"]) == ["/x.png"]
    empty = Results(reason="no good match")
    assert empty == [] and empty.reason == "no good match"


def test_fake_encoder_implements_the_protocol(fake_encoder) -> None:
    from mmsearch.models.base import Encoder

    assert isinstance(fake_encoder, Encoder)
