"""Ground-truth task generators: the stated evidence really is the only place that holds
what each answer needs, checked from the sequences themselves."""

from __future__ import annotations

import pytest

from captum_mamba.apps.ground_truth import (
    CONTENT,
    LABEL_A,
    LABEL_B,
    MARK_A,
    MARK_B,
    NEEDLE,
    QUERY,
    SEP,
    TASKS,
    evaluation_items,
    generate,
)


@pytest.mark.parametrize("seed", [0, 1])
def test_copy(seed):
    for example in generate("copy", 20, seed):
        n = 8
        assert len(example.ids) == 2 * n + 1 and example.ids[n] == SEP
        assert len(set(example.ids[:n])) == n  # distinct: one source per token
        assert [q.position for q in example.queries] == list(range(n, 2 * n))
        for j, query in enumerate(example.queries):
            assert query.answer == example.ids[n + 1 + j] == example.ids[j]
            assert query.evidence == (j,)
            assert [i for i in range(query.position + 1) if example.ids[i] == query.answer] == [j]


def test_recall():
    for example in generate("recall", 30, 0):
        (query,) = example.queries
        ids = example.ids
        assert ids[-2] == QUERY and query.position == len(ids) - 1
        key, value = query.evidence
        assert value == key + 1 and key % 2 == 0
        assert ids[key] == ids[-1] and ids[value] == query.answer
        keys = ids[0:-2:2]
        assert len(set(keys)) == len(keys) and keys.count(ids[-1]) == 1


@pytest.mark.parametrize("size", [16, 32, 128])
def test_needle(size):
    for example in generate("needle", 20, 3, size):
        (query,) = example.queries
        ids = example.ids
        assert len(ids) == size and ids[-1] == QUERY
        marker, value = query.evidence
        assert ids[marker] == NEEDLE and value == marker + 1
        assert ids[value] == query.answer and ids.count(query.answer) == 1
        assert ids.count(NEEDLE) == 1


def test_induction():
    repeats = set()
    for example in generate("induction", 60, 1):
        ids = example.ids
        count = len(ids) - len(example.queries)
        assert len(ids) == 16 and len(set(ids[:count])) == count  # distinct tokens
        repeats.add(len(example.queries))
        for m, query in enumerate(example.queries):
            first, second = query.evidence
            assert query.position == count + m and second == first + 1 < count - 1
            assert ids[first] == ids[query.position] and ids[second] == query.answer
            # the current token's only earlier occurrence is the evidence, and the
            # answer's only occurrence up to the query is its successor there
            assert ids[: query.position].count(ids[query.position]) == 1
            assert ids[: query.position + 1].count(query.answer) == 1
            if m:  # the repeat continues the earlier run
                assert first == example.queries[m - 1].evidence[1]
    assert repeats == {1, 2, 3, 4}


def test_planted():
    labels = set()
    for example in generate("planted", 40, 2):
        (query,) = example.queries
        ids = example.ids
        (place,) = query.evidence
        assert ids[-1] == QUERY and len(ids) == 16
        marks = [i for i, t in enumerate(ids) if t in (MARK_A, MARK_B)]
        assert marks == [place]
        assert query.answer == {MARK_A: LABEL_A, MARK_B: LABEL_B}[ids[place]]
        assert all(t in CONTENT for i, t in enumerate(ids[:-1]) if i != place)
        labels.add(query.answer)
    assert labels == {LABEL_A, LABEL_B}


def test_items_are_cut_after_the_query_and_seeded():
    items = evaluation_items("copy", 3, 8, every_query=True)
    assert len(items) == 24
    for item in items:
        assert item.ids[item.evidence[0]] == item.answer
        assert len(item.ids) - 1 >= 8  # the query position is the last one
    assert items == evaluation_items("copy", 3, 8, every_query=True)
    assert generate("planted", 5, 0) != generate("planted", 5, 1)
    for task, spec in TASKS.items():
        for item in evaluation_items(task, 4, spec.eval_sizes[0]):
            assert max(item.evidence) < len(item.ids) - 1  # evidence precedes the current token
