"""Text classifiers: the fast training path against an independent float64 reference,
training on a tiny 3-class file, checkpoints, the cache key, and argument checks."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from captum_mamba.apps.cli import main
from captum_mamba.apps.data import LabelledData, LabelledText, read_labelled
from captum_mamba.apps.sentiment import (
    CHECKPOINT_FORMAT,
    PAD_TOKEN,
    PADDING_ROW,
    UNKNOWN_ROW,
    CheckpointError,
    ClassifierSetup,
    CompactEmbedding,
    NaiveBayesTeacher,
    TextClassifier,
    build_model,
    cache_key,
    classifier_loss,
    draw_phrases,
    load_or_train,
    normalise,
    pad_left,
    text_words,
    tokenize,
    train_classifier,
)
from captum_mamba.attr.forward import fast_forward

COLOURS = ("red", "green", "blue")
FILLERS = ("the", "a", "film", "plot", "cast", "is", "was", "very", "quite", "and", "of", "it")


def word_tokenizer(words=COLOURS + FILLERS + ("rare",)) -> Tokenizer:
    """Word-level tokenizer: id 0 padding, 1 unknown, then one id per word."""
    vocabulary = {PAD_TOKEN: 0, "[UNK]": 1, **{word: i + 2 for i, word in enumerate(words)}}
    tokenizer = Tokenizer(WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    return tokenizer


def colour_texts(count: int, seed: int) -> list[LabelledText]:
    """Texts with one colour word among fillers; the label is the colour's index."""
    generator = random.Random(seed)
    examples = []
    for _ in range(count):
        label = generator.randrange(3)
        words = generator.choices(FILLERS, k=generator.randint(2, 8))
        words.insert(generator.randint(0, len(words)), COLOURS[label])
        examples.append(LabelledText(" ".join(words), label))
    return examples


TINY = ClassifierSetup(
    hidden_size=8,
    num_layers=1,
    state_size=2,
    min_token_count=1,
    epochs=12,
    batch_size=16,
    learning_rate=1e-2,
    weight_decay=0.0,
    token_dropout=0.0,
    feature_dropout=0.0,
    patience=12,
)


# ---------------------------------------------------------------------------------------
# The training forward/backward against an independent float64 reference
# ---------------------------------------------------------------------------------------


def perturbed_model(pooling: str, layers: int = 2):
    """A float64 classifier over a 12-token vocabulary whose parameters are all moved
    away from their structured initial values."""
    tokenizer = word_tokenizer()
    setup = ClassifierSetup(hidden_size=8, num_layers=layers, state_size=3, pooling=pooling)
    torch.manual_seed(0)
    model = build_model(setup, list(range(2, 14)), tokenizer, num_labels=3).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            scale = 0.3 if "weight" in name and "norm" not in name else 0.5
            parameter.add_(scale * noise)
        for block in model.backbone.layers:
            # time steps of order 0.1-1, so that the scan's decay matters
            block.mixer.dt_proj.bias.copy_(
                torch.linspace(-2.0, 0.5, block.mixer.dt_proj.bias.numel())
            )
    return model, setup


def rms(x, weight, eps):
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def silu(x):
    return x / (1 + torch.exp(-x))


def reference_logits(model, rows, mask):
    """Classifier logits recomputed with explicit loops, parameters kept differentiable."""
    m = mask.double()[..., None]
    h = model.get_input_embeddings().weight[rows]
    for block in model.backbone.layers:
        mixer = block.mixer
        assert mixer.in_proj.bias is None and mixer.out_proj.bias is None
        inner, state = mixer.intermediate_size, mixer.ssm_state_size
        xz = (rms(h, block.norm.weight, block.norm.variance_epsilon) * m) @ mixer.in_proj.weight.T
        x, z = xz[..., :inner], xz[..., inner:]
        kernel = mixer.conv1d.weight[:, 0]  # (inner, K)
        width = kernel.shape[1]
        conv = []
        for t in range(x.shape[1]):
            total = mixer.conv1d.bias.clone()
            for k in range(width):
                source = t - (width - 1) + k
                if source >= 0:
                    total = total + kernel[:, k] * x[:, source]
            conv.append(total)
        x = silu(torch.stack(conv, 1)) * m
        projected = x @ mixer.x_proj.weight.T
        rank = mixer.time_step_rank
        dt_low, B, C = (
            projected[..., :rank],
            projected[..., rank : rank + state],
            projected[..., rank + state :],
        )
        dt = torch.log1p(torch.exp(dt_low @ mixer.dt_proj.weight.T + mixer.dt_proj.bias))
        A = -torch.exp(mixer.A_log)
        s = x.new_zeros(x.shape[0], inner, state)
        ys = []
        for t in range(x.shape[1]):
            s = (
                torch.exp(dt[:, t, :, None] * A) * s
                + dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
            )
            ys.append((s * C[:, t, None, :]).sum(-1))
        y = (torch.stack(ys, 1) + x * mixer.D) * silu(z)
        h = h + y @ mixer.out_proj.weight.T
    h = rms(h, model.backbone.norm_f.weight, model.backbone.norm_f.variance_epsilon)
    pooled = h[:, -1] if model.pooling == "last" else (h * m).sum(1) / m.sum(1)
    return pooled @ model.head.weight.T


def batch_with_padding():
    rows, mask = pad_left(
        [[2, 5, 7, 3, 9, 4, 2], [11, 4, 6], [8, UNKNOWN_ROW, 13, 12, 3]], PADDING_ROW
    )
    return rows, mask, torch.tensor([2, 0, 1])


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_training_loss_and_gradients_equal_a_float64_reference(pooling) -> None:
    model, setup = perturbed_model(pooling)
    rows, mask, labels = batch_with_padding()
    with fast_forward(model):
        loss = classifier_loss(model, rows, mask, labels, setup)
    loss.backward()
    fast = gradients(model)
    model.zero_grad(set_to_none=True)
    expected = F.cross_entropy(reference_logits(model, rows, mask), labels)
    expected.backward()
    reference = gradients(model)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)
    # every parameter, A_log included, gets its exact gradient on the fast path
    assert any(name.endswith("A_log") for name in fast)
    assert set(fast) == set(reference)
    for name, grad in fast.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, reference[name], rtol=1e-9, atol=1e-12, msg=name)


def test_training_path_matches_the_models_own_forward() -> None:
    """transformers' own forward (its CPU path) rounds RMSNorm and ``A`` through float32
    even in a float64 model, so it agrees with the fast path to about 1e-7 only."""
    model, setup = perturbed_model("mean")
    rows, mask, labels = batch_with_padding()
    # Tokenizer ids 2..13 have rows 2..13, padding (id 0) row 0; id 1 is outside the
    # vocabulary (row 1): the rows are the tokenizer ids.
    assert model.get_input_embeddings().vocabulary == list(range(2, 14))
    token_ids = rows
    assert torch.equal(model.get_input_embeddings().row_ids(token_ids), rows)
    with fast_forward(model):
        loss = classifier_loss(model, rows, mask, labels, setup)
    loss.backward()
    fast = gradients(model)
    model.zero_grad(set_to_none=True)
    own = F.cross_entropy(model(input_ids=token_ids, attention_mask=mask), labels)
    own.backward()
    torch.testing.assert_close(loss, own, rtol=1e-6, atol=0)
    for name, grad in fast.items():
        # float32 rounding is relative to the largest entries, not to each one
        scale = float(grad.abs().max())
        torch.testing.assert_close(
            grad, model.get_parameter(name).grad, rtol=0, atol=1e-5 * scale, msg=name
        )


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_left_padding_does_not_change_the_logits(pooling) -> None:
    model, _ = perturbed_model(pooling)
    rows, mask, _ = batch_with_padding()
    with fast_forward(model), torch.no_grad():
        batched = model(
            inputs_embeds=model.get_input_embeddings().weight[rows], attention_mask=mask
        )
        for i in range(len(rows)):
            alone = rows[i][mask[i].bool()][None]
            single = model(inputs_embeds=model.get_input_embeddings().weight[alone])
            torch.testing.assert_close(batched[i], single[0], rtol=1e-12, atol=1e-12)


def test_compact_embedding_maps_tokenizer_ids_to_rows() -> None:
    embedding = CompactEmbedding([5, 17, 90], tokenizer_size=100, embedding_dim=4, padding_id=1)
    ids = torch.tensor([[1, 5, 17, 90, 3, 99]])
    assert embedding.row_ids(ids).tolist() == [[PADDING_ROW, 2, 3, 4, UNKNOWN_ROW, UNKNOWN_ROW]]
    torch.testing.assert_close(embedding(ids), embedding.weight[torch.tensor([[0, 2, 3, 4, 1, 1]])])
    # it takes the tokenizer's 100 ids; it stores 5 rows (the rows are not saved: the
    # vocabulary rebuilds them)
    assert embedding.num_embeddings == 100 and embedding.weight.shape == (5, 4)
    assert "rows" not in embedding.state_dict()


# ---------------------------------------------------------------------------------------
# Text handling
# ---------------------------------------------------------------------------------------


def test_normalise_follows_sst2() -> None:
    assert normalise("It's a film, isn't it?  (Yes!)") == "it 's a film , is n't it ? ( yes ! )"


def test_truncation_keeps_the_head_or_the_tail_and_normalising_is_optional() -> None:
    tokenizer = word_tokenizer()
    text = "The red film was very blue"
    setup = ClassifierSetup(max_length=3)
    decode = lambda ids: [tokenizer.id_to_token(i) for i in ids]  # noqa: E731
    assert decode(tokenize(tokenizer, [text], setup)[0]) == ["was", "very", "blue"]
    head = setup.replace(truncation="keep_head")
    assert decode(tokenize(tokenizer, [text], head)[0]) == ["the", "red", "film"]
    raw = setup.replace(truncation="keep_head", normalise=False)
    assert decode(tokenize(tokenizer, [text], raw)[0]) == ["[UNK]", "red", "film"]
    assert tokenize(tokenizer, [""], setup) == [[tokenizer.token_to_id(PAD_TOKEN)]]


# ---------------------------------------------------------------------------------------
# Training, checkpoints, cache
# ---------------------------------------------------------------------------------------


def colour_file(tmp_path, count: int = 400, seed: int = 0):
    names = {0: "red", 1: "green", 2: "blue"}
    lines = ["text,label"] + [f'"{e.text}",{names[e.label]}' for e in colour_texts(count, seed)]
    path = tmp_path / "colours.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_three_classes_from_a_csv_with_string_labels(tmp_path) -> None:
    data = read_labelled(colour_file(tmp_path))
    assert data.label_names == ("blue", "green", "red")
    lines = []
    classifier = load_or_train(
        data, word_tokenizer(), TINY, tmp_path / "cache", progress=lines.append
    )
    assert classifier.model.head.out_features == 3
    assert classifier.label_names == ("blue", "green", "red")
    assert classifier.metrics["validation_accuracy"] >= 0.9, classifier.metrics
    history = classifier.metrics["history"]
    assert len(history) == TINY.epochs and history[-1]["loss"] < history[0]["loss"]
    assert any("step" in line for line in lines) and any("epoch 1/" in line for line in lines)
    held_out = [LabelledText(e.text, {0: 2, 1: 1, 2: 0}[e.label]) for e in colour_texts(60, seed=1)]
    assert classifier.accuracy(held_out) >= 0.9


@pytest.fixture(scope="module")
def trained() -> TextClassifier:
    examples = colour_texts(120, seed=2)
    return train_classifier(
        examples[:100], word_tokenizer(), TINY.replace(epochs=3), COLOURS, examples[100:], len
    )


def test_training_is_seeded_and_leaves_the_global_random_state_alone(trained) -> None:
    examples = colour_texts(120, seed=2)
    state = torch.get_rng_state()
    setup = TINY.replace(epochs=3, token_dropout=0.2, feature_dropout=0.2)
    runs = [
        train_classifier(examples[:100], word_tokenizer(), setup, COLOURS, examples[100:], len)
        for _ in range(2)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    first, second = (run.model.state_dict() for run in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)
    # A_log is kept at its initial value, everything else is trained.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed)  # the initialisation train_classifier starts from
        vocabulary = runs[0].model.get_input_embeddings().vocabulary
        untrained = build_model(setup, vocabulary, word_tokenizer(), 3)
    for name, value in untrained.state_dict().items():
        assert torch.equal(value, first[name]) == name.endswith("A_log"), name


def test_checkpoint_round_trip(tmp_path, trained) -> None:
    path = trained.save(tmp_path / "sub" / "colours.ckpt")
    loaded = TextClassifier.load(path)
    texts = [e.text for e in colour_texts(10, seed=3)] + ["rare words unseen"]
    assert torch.equal(loaded.logits(texts), trained.logits(texts))
    assert loaded.setup == trained.setup and loaded.label_names == COLOURS
    assert loaded.metrics == trained.metrics and not loaded.model.training
    assert (
        loaded.model.get_input_embeddings().vocabulary
        == trained.model.get_input_embeddings().vocabulary
    )
    assert torch.equal(loaded.encode(texts)[0], trained.encode(texts)[0])
    assert not list(tmp_path.glob("sub/*.partial"))


def test_checkpoints_from_before_the_teacher_load_as_trained_without_one(tmp_path, trained) -> None:
    """A checkpoint whose setup lacks the teacher's fields (saved before they existed)
    was trained on the labels alone, and its setup says so."""
    path = trained.save(tmp_path / "old.ckpt")
    payload = path.read_bytes().partition(b"\n")[2]
    saved = torch.load(io.BytesIO(payload), weights_only=True)
    for name in ("teacher_weight", "teacher_temperature", "phrases_per_text"):
        del saved["setup"][name]
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    payload = buffer.getvalue()
    header = f"{CHECKPOINT_FORMAT} sha256={hashlib.sha256(payload).hexdigest()}\n"
    path.write_bytes(header.encode() + payload)
    loaded = TextClassifier.load(path)
    assert loaded.setup == trained.setup.replace(teacher_weight=0.0)
    assert "teacher" not in loaded.setup.describe()
    texts = [e.text for e in colour_texts(10, seed=3)]
    assert torch.equal(loaded.logits(texts), trained.logits(texts))


def flip_bit(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: data[:-100], "corrupt or truncated (checksum mismatch)"),
        (lambda data: flip_bit(data, len(data) // 2), "checksum mismatch"),
        (lambda data: b"", "not a captum-mamba classifier checkpoint"),
        (lambda data: b"PK\x03\x04" + data[4:], "not a captum-mamba classifier checkpoint"),
    ],
    ids=["truncated", "flipped-bit", "empty", "other-file"],
)
def test_damaged_checkpoints_are_named(tmp_path, trained, damage, expected) -> None:
    path = trained.save(tmp_path / "model.ckpt")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError) as caught:
        TextClassifier.load(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="not found"):
        TextClassifier.load(tmp_path / "missing.ckpt")


def test_cache_is_reused_and_a_corrupt_cache_file_is_retrained(tmp_path) -> None:
    data = read_labelled(colour_file(tmp_path, count=60))
    setup = TINY.replace(epochs=2)
    lines = []
    first = load_or_train(data, word_tokenizer(), setup, tmp_path, progress=lines.append)
    (path,) = tmp_path.glob("classifier-*.ckpt")
    lines.clear()
    again = load_or_train(data, word_tokenizer(), setup, tmp_path, progress=lines.append)
    assert lines == [] and torch.equal(again.logits(["red film"]), first.logits(["red film"]))
    path.write_bytes(path.read_bytes()[:-10])
    load_or_train(data, word_tokenizer(), setup, tmp_path, progress=lines.append)
    assert str(path) in lines[0] and "training again" in lines[0]
    TextClassifier.load(path)  # rewritten


def test_cache_key_covers_data_tokenizer_test_set_and_every_setup_field() -> None:
    examples = tuple(colour_texts(20, seed=4))
    data = LabelledData(examples, COLOURS, "a.csv")
    tokenizer = word_tokenizer()
    base = cache_key(TINY, data, tokenizer)
    assert base == cache_key(TINY, LabelledData(examples, COLOURS, "elsewhere/b.csv"), tokenizer)
    changed_text = (LabelledText(examples[0].text + " it", examples[0].label), *examples[1:])
    changed_label = (LabelledText(examples[0].text, (examples[0].label + 1) % 3), *examples[1:])
    keys = [
        cache_key(TINY, LabelledData(changed_text, COLOURS, "a.csv"), tokenizer),
        cache_key(TINY, LabelledData(changed_label, COLOURS, "a.csv"), tokenizer),
        cache_key(TINY, LabelledData(examples, ("r", "g", "b"), "a.csv"), tokenizer),
        cache_key(TINY, data, word_tokenizer((*COLOURS, *FILLERS))),
        cache_key(TINY, data, tokenizer, test=data),
    ]
    other = {
        "pooling": "last",
        "truncation": "keep_head",
        "normalise": False,
        "balance_classes": not TINY.balance_classes,
    }
    for field in dataclasses.fields(ClassifierSetup):
        value = getattr(TINY, field.name)
        if field.name in other:
            new = other[field.name]
        elif isinstance(value, float):
            new = value / 2 if value else 0.1
        else:
            new = value + 1
        keys.append(cache_key(TINY.replace(**{field.name: new}), data, tokenizer))
    assert len({base, *keys}) == len(keys) + 1


# (field, bad value, part of the message)
BAD_SETUPS = [
    ("epochs", 0, "epochs must be at least 1, got 0"),
    ("hidden_size", -4, "hidden_size must be at least 1"),
    ("batch_size", 0, "batch_size must be at least 1"),
    ("max_length", 0, "max_length must be at least 1"),
    ("patience", 0, "patience must be at least 1"),
    ("learning_rate", 0.0, "learning_rate must be positive"),
    ("learning_rate", float("nan"), "learning_rate must be positive"),
    ("weight_decay", -0.1, "weight_decay must be >= 0"),
    ("token_dropout", 1.0, "token_dropout must be in [0, 1)"),
    ("feature_dropout", -0.1, "feature_dropout must be in [0, 1)"),
    ("label_smoothing", 1.5, "label_smoothing must be in [0, 1)"),
    ("validation_fraction", 1.0, "validation_fraction must be in (0, 1)"),
    ("pooling", "max", "pooling must be one of"),
    ("truncation", "middle", "truncation must be one of"),
    ("teacher_weight", 1.5, "teacher_weight must be in [0, 1]"),
    ("teacher_temperature", 0.0, "teacher_temperature must be positive"),
    ("teacher_temperature", float("inf"), "teacher_temperature must be positive"),
    ("phrases_per_text", -1, "phrases_per_text must be >= 0"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD_SETUPS)
def test_out_of_range_setups_are_refused_with_one_line(field, value, expected) -> None:
    with pytest.raises(ValueError) as caught:
        ClassifierSetup().replace(**{field: value})
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_setup_fields_and_bad_training_data_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown ClassifierSetup fields"):
        ClassifierSetup().replace(layers=3)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        train_classifier([LabelledText("red", 2)], word_tokenizer(), TINY, ("a", "b"))
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_classifier([LabelledText("red", 0)], word_tokenizer(), TINY, ("a",))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--count", "0"], "argument --count: must be at least 1, got 0"),
        (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["--threads", "two"], "argument --threads: expected an integer, got 'two'"),
    ],
)
def test_demo_refuses_out_of_range_arguments(capsys, arguments, expected) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["demo", "--data", "nowhere", *arguments])
    assert caught.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]


# ---------------------------------------------------------------------------------------
# Distillation: the naive Bayes teacher, the phrases, the training targets
# ---------------------------------------------------------------------------------------


def test_naive_bayes_teacher_equals_counting_by_hand() -> None:
    texts = [["a", "gem", "gem"], ["a", "mess"], ["fine", "gem"], ["dull", "mess", "a"]]
    labels = [1, 0, 1, 0]
    teacher = NaiveBayesTeacher.fit(texts, labels, 2, smoothing=0.5)
    words = ["a", "gem", "mess", "fine", "dull"]
    # texts of each class that contain each word (a repeated word counts once)
    contain = {0: {"a": 2, "gem": 0, "mess": 2, "fine": 0, "dull": 1},
               1: {"a": 1, "gem": 2, "mess": 0, "fine": 1, "dull": 0}}  # fmt: skip

    def log_p(word, label):
        total = sum(contain[label].values()) + 0.5 * len(words)
        return math.log((contain[label][word] + 0.5) / total)

    query = [["gem", "a", "gem", "unseen"], [], ["dull"]]
    expected = torch.tensor(
        [[sum(log_p(w, k) for w in {"gem", "a"}) for k in (0, 1)], [0.0, 0.0],
         [log_p("dull", k) for k in (0, 1)]],
        dtype=torch.float64,
    )  # fmt: skip
    torch.testing.assert_close(teacher.logits(query), expected, rtol=1e-12, atol=1e-12)
    assert teacher.logits([]).shape == (0, 2)
    probabilities = teacher.probabilities(query, temperature=2.0)
    difference = (expected[:, 1] - expected[:, 0]) / 2.0
    torch.testing.assert_close(probabilities[:, 1], torch.sigmoid(difference))
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3, dtype=torch.float64))
    assert probabilities[0, 1] > 0.5 > probabilities[2, 1]


def test_phrases_are_runs_of_consecutive_words() -> None:
    texts = [[f"w{i}" for i in range(n)] for n in (1, 2, 3, 7, 12)]
    phrases = draw_phrases(texts, 50, torch.Generator().manual_seed(3))
    assert phrases == draw_phrases(texts, 50, torch.Generator().manual_seed(3))
    assert len(phrases) == 3 * 50  # texts of fewer than three words give none
    lengths = {3: set(), 7: set(), 12: set()}
    for index, phrase in enumerate(phrases):
        text = texts[2 + index // 50]
        start = text.index(phrase[0])
        assert phrase == text[start : start + len(phrase)]
        lengths[len(text)].add(len(phrase))
    # every length 1 .. len - 1 is drawn, the whole text never
    assert lengths[3] == {1, 2} and lengths[7] == set(range(1, 7))
    assert max(lengths[12]) <= 11


def test_text_words_follow_the_setup() -> None:
    assert text_words("It's GOOD.", ClassifierSetup()) == ["it", "'s", "good", "."]
    assert text_words("It's GOOD.", ClassifierSetup(normalise=False)) == ["It's", "GOOD."]


def test_teacher_targets_and_phrases_in_training() -> None:
    """With the teacher, the loss of the first step is the cross-entropy against the
    mixture of labels and teacher probabilities over texts and phrases; without it,
    against the labels; the recorded teacher accuracy is the teacher's own."""
    examples = colour_texts(60, seed=5)
    setup = TINY.replace(
        epochs=1, batch_size=1000, teacher_weight=0.25, phrases_per_text=2,
        teacher_temperature=3.0, balance_classes=False,
    )  # fmt: skip
    lines: list[str] = []
    classifier = train_classifier(
        examples[:40], word_tokenizer(), setup, COLOURS, examples[40:], lines.append
    )
    words = [text_words(e.text, setup) for e in examples[:40]]
    teacher = NaiveBayesTeacher.fit(words, [e.label for e in examples[:40]], 3)
    phrases = draw_phrases(words, 2, torch.Generator().manual_seed(setup.seed))
    assert f"on 40 texts and {len(phrases)} phrases" in lines[0]
    validation = teacher.logits([text_words(e.text, setup) for e in examples[40:]])
    accuracy = float((validation.argmax(-1) == torch.tensor([e.label for e in examples[40:]]))
                     .double().mean())  # fmt: skip
    assert classifier.metrics["teacher_validation_accuracy"] == pytest.approx(accuracy)

    # the first (only) step's loss, recomputed from the untrained model
    texts = [e.text for e in examples[:40]] + [" ".join(p) for p in phrases]
    labels = F.one_hot(torch.tensor([e.label for e in examples[:40]]), 3).double()
    targets = torch.cat([
        0.75 * labels + 0.25 * teacher.probabilities(words, 3.0),
        teacher.probabilities(phrases, 3.0),
    ])  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed)
        vocabulary = classifier.model.get_input_embeddings().vocabulary
        model = build_model(setup, vocabulary, word_tokenizer(), 3)
    ids, mask = pad_left(tokenize(word_tokenizer(), texts, setup), 0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).double()
    expected = -(targets * logits.log_softmax(-1)).sum(-1).mean()
    assert classifier.metrics["history"][0]["loss"] == pytest.approx(float(expected), rel=1e-5)

    plain = train_classifier(
        examples[:40], word_tokenizer(), setup.replace(teacher_weight=0.0), COLOURS, (), len
    )
    assert "teacher_validation_accuracy" not in plain.metrics
    expected = F.cross_entropy(logits[:40], labels.argmax(-1))
    assert plain.metrics["history"][0]["loss"] == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------------------------------
# No misleading messages on a CPU
# ---------------------------------------------------------------------------------------

#: A fresh process: transformers prints its "falling back ... install mamba_ssm /
#: causal_conv1d" messages once per process, on the first forward of its own Mamba path.
_PREDICT_AND_EXPLAIN = """
import torch
from app_helpers import NEWS, tiny_classifier
from captum_mamba import LayerMambaLRP

classifier = tiny_classifier()
texts = [text for text, _ in NEWS[:4]]
ids, mask = classifier.encode(texts)
predicted = classifier.logits(texts).argmax(-1)
model = classifier.model
LayerMambaLRP(model, model.get_input_embeddings()).attribute(
    ids, target=predicted.tolist(), additional_forward_args=(mask,)
)
if {own_forward}:
    with torch.no_grad():
        model(ids, attention_mask=mask)
print("done")
"""


@pytest.mark.parametrize("own_forward", [False, True])
def test_predictions_and_explanations_print_no_kernel_fallback_messages(own_forward) -> None:
    """The demo's path (predict with ``TextClassifier.logits``, explain) runs through the
    package's scans: no kernel messages that tell a CPU user to install CUDA packages. The
    model's own forward, run in the same way, prints them (so the check can fail)."""

    run = subprocess.run(
        [sys.executable, "-c", _PREDICT_AND_EXPLAIN.format(own_forward=own_forward)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr
    assert ("falling back" in run.stderr) == own_forward, run.stderr
