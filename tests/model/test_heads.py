"""Binary classifiers with a single output (Dense(1): a logit or a sigmoid probability) are read
as decisions against their threshold, not by argmax, which over one column is always class 0;
multi-label classifiers (several sigmoids) as one decision per label."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import build_tiny_mobilenet, write_images

from mobiledeploy.evaluation.metrics import agreement, artifact_metrics, mean_kl, topk_accuracy
from mobiledeploy.errors import MobiledeployError
from mobiledeploy.model.heads import head_for, head_of
from mobiledeploy.reports import Head


def _binary(activation: str | None, extra=None, units: int = 1):
    import keras

    base = build_tiny_mobilenet(seed=3)
    x = keras.layers.Dense(units, activation=activation, name="score")(base.get_layer("drop").output)
    for layer in extra or []:
        x = layer(x)
    return keras.Model(base.inputs, x, name="tiny_binary")


def test_head_of_reads_the_last_activation():
    import keras

    assert head_of(build_tiny_mobilenet()).kind == "classes"
    assert head_of(_binary(None)).kind == "logit"
    assert head_of(_binary("sigmoid")).kind == "sigmoid"
    assert head_of(_binary(None, [keras.layers.Activation("sigmoid")])).kind == "sigmoid"
    assert head_of(_binary("sigmoid", [keras.layers.Flatten(), keras.layers.Dropout(0.2)])).kind == "sigmoid"
    assert head_of(_binary("sigmoid", [keras.layers.Dense(1)])).kind == "logit"  # a linear layer after it
    assert head_of(_binary("sigmoid", units=3)).kind == "labels"
    assert head_of(_binary(None, [keras.layers.Activation("sigmoid")], units=3)).kind == "labels"
    assert head_of(_binary(None, units=3)).kind == "classes"  # logits: read as classes
    assert head_of(_binary("softmax", units=3)).kind == "classes"


def test_a_requested_head_must_fit_the_output_width():
    assert head_for(_binary(None, units=3)).kind == "classes"  # auto: what head_of reads
    assert head_for(_binary(None, units=3), "label-logits").kind == "label-logits"
    assert head_for(_binary("sigmoid"), "logit").kind == "logit"
    with pytest.raises(MobiledeployError, match="--head sigmoid needs a single output; the model has 3"):
        head_for(_binary(None, units=3), "sigmoid")
    with pytest.raises(MobiledeployError, match="--head labels needs several outputs; the model has 1"):
        head_for(_binary(None), "labels")
    with pytest.raises(MobiledeployError, match="unknown head 'softmax'"):
        head_for(_binary(None), "softmax")


def test_multi_label_logits_are_decided_at_zero():
    reference = np.array([[2.0, -1.0, 0.5], [-0.5, 1.0, -2.0]], np.float32)
    candidate = np.array([[1.0, -0.5, -0.1], [-0.4, 0.8, -1.0]], np.float32)
    head = Head("label-logits")
    assert agreement(reference, candidate, head) == 0.5  # row 0 turns its third label off
    assert agreement(reference, candidate, Head("labels")) == 1.0  # at 0.5 no decision changes
    p, q = 1 / (1 + np.exp(-reference)), 1 / (1 + np.exp(-candidate))
    bernoulli = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    assert mean_kl(reference, candidate, head) == pytest.approx(np.mean(bernoulli.sum(axis=1)), rel=1e-3)


def test_single_output_is_compared_as_decisions():
    reference = np.array([[2.0], [-1.0], [0.5], [-0.2]], np.float32)
    candidate = np.array([[1.5], [0.3], [0.4], [0.1]], np.float32)
    logit = Head("logit")
    assert agreement(reference, candidate, logit) == 0.5  # argmax over one column says 1.0
    labels = np.array([1, 0, 0, 0])
    assert topk_accuracy(reference, labels, 1, logit) == 0.75
    assert topk_accuracy(candidate, labels, 1, logit) == 0.25
    probabilities = 1 / (1 + np.exp(-reference))
    assert agreement(probabilities, np.full_like(probabilities, 0.51), Head("sigmoid")) == 0.5
    p, q = 1 / (1 + np.exp(-reference[:, 0])), 1 / (1 + np.exp(-candidate[:, 0]))  # Bernoulli KL
    bernoulli = np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)))
    assert mean_kl(reference, candidate, logit) == pytest.approx(bernoulli, rel=1e-3)  # softmax of one: 0
    metrics = artifact_metrics("q", reference, candidate, labels, logit)
    assert metrics["top1"] == 0.25 and "top5" not in metrics  # two classes: top-5 holds every label
    assert metrics["per_class_change"] == {"0": round(-2 / 3, 6)}  # class 1 stays right


def test_multi_label_outputs_agree_only_when_every_label_does():
    reference = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.8], [0.1, 0.2, 0.3], [0.6, 0.4, 0.7]], np.float32)
    candidate = np.array([[0.9, 0.4, 0.1], [0.2, 0.7, 0.8], [0.1, 0.2, 0.6], [0.6, 0.4, 0.7]], np.float32)
    labels_head = Head("labels")
    assert agreement(reference, candidate, labels_head) == 0.5  # rows 0 and 2 turn a second label off/on
    assert agreement(reference, candidate) == 1.0  # the argmax never moves
    p, q = reference.astype(np.float64), candidate.astype(np.float64)
    bernoulli = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    assert mean_kl(reference, candidate, labels_head) == pytest.approx(np.mean(bernoulli.sum(axis=1)), rel=1e-3)
    labels = np.array([0, 2, 2, 0])
    assert topk_accuracy(candidate, labels, 1, labels_head) == 0.75  # the top label is the class
    assert artifact_metrics("q", reference, candidate, labels, labels_head)["agreement"] == 0.5


@pytest.fixture(scope="module")
def binary_build(tmp_path_factory):
    """A tiny binary logit model whose bias puts the threshold at the median score of its
    evaluation images, quantized; and those images in two class folders."""
    import mobiledeploy
    from mobiledeploy.data import calibration
    from mobiledeploy.data import datasets

    root = tmp_path_factory.mktemp("binary")
    write_images(root / "calib", 40, size=24, seed=21)
    write_images(root / "eval" / "a_negative", 20, size=24, seed=22)
    write_images(root / "eval" / "b_positive", 20, size=24, seed=23)
    model = _binary(None)
    preprocessing = calibration.preprocessing_for(model)
    images = np.concatenate(list(datasets.iter_batches(datasets.open_data(root / "eval"), preprocessing, 40)))
    kernel, bias = model.get_layer("score").get_weights()
    scores = np.asarray(model(images, training=False))[:, 0]
    model.get_layer("score").set_weights([kernel, bias - np.median(scores)])
    model.save(root / "binary.keras")
    mobiledeploy.quantize(root / "binary.keras", root / "calib", root / "build", num_calib=40, num_holdout=0)
    return root


def test_eval_scores_a_binary_model_by_its_threshold(binary_build):
    import keras

    from mobiledeploy.data import calibration

    from mobiledeploy.data import datasets
    from mobiledeploy.evaluation.builds import evaluate_build

    manifest = json.loads((binary_build / "build" / "manifest.json").read_text())
    assert manifest["head"]["kind"] == "logit"
    report = evaluate_build(binary_build / "build", binary_build / "eval")  # labels 0 and 1: was refused
    assert report.head == "logit"
    model = keras.saving.load_model(binary_build / "binary.keras")
    data = datasets.open_data(binary_build / "eval")
    images = np.concatenate(list(datasets.iter_batches(data, calibration.preprocessing_for(model), 40)))
    decided = np.asarray(model(images, training=False))[:, 0] > 0
    assert 0.3 < decided.mean() < 0.7  # the threshold splits the images: agreement can fail
    expected = float(np.mean(decided == np.asarray(data.labels)))
    for row in report.rows:
        assert row["top1"] == pytest.approx(expected, abs=0.051)  # at most two images flip in int8
        assert "top5" not in row
    assert report.row("model_folded.keras")["top1"] == pytest.approx(expected)


@pytest.mark.parametrize("activation, requested, kind, threshold", [
    ("sigmoid", "auto", "labels", 0.5),
    (None, "label-logits", "label-logits", 0.0),  # trained from logits: only --head says so
])
def test_a_multi_label_build_is_scored_label_by_label(tmp_path, activation, requested, kind, threshold):
    """A tiny 3-label model whose biases put each label's threshold at its median score: the
    manifest and eval call it multi-label, and eval's agreement is the share of images whose
    int8 file turns on exactly the labels the float model does. Sigmoid outputs are read so by
    themselves; linear ones (logits) when --head label-logits asks, and eval keeps the build's head."""
    import keras

    import mobiledeploy
    from mobiledeploy.data import calibration
    from mobiledeploy.data import datasets
    from mobiledeploy.evaluation.builds import evaluate_build
    from mobiledeploy.runtime.runners import open_runner

    write_images(tmp_path / "calib", 40, size=24, seed=31)
    write_images(tmp_path / "eval", 40, size=24, seed=32)
    model = _binary(activation, units=3)
    images = np.concatenate(list(datasets.iter_batches(
        datasets.open_data(tmp_path / "eval"), calibration.preprocessing_for(model), 40)))
    kernel, bias = model.get_layer("score").get_weights()
    logits = np.asarray(keras.Model(model.inputs, model.get_layer("drop").output)(images)) @ kernel
    model.get_layer("score").set_weights([kernel, -np.median(logits, axis=0)])
    model.save(tmp_path / "labels.keras")
    mobiledeploy.quantize(tmp_path / "labels.keras", tmp_path / "calib", tmp_path / "build", num_calib=40,
                          num_holdout=0, head=requested)
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert manifest["head"]["kind"] == kind
    report = evaluate_build(tmp_path / "build", tmp_path / "eval")
    assert report.head == kind
    reference = open_runner(tmp_path / "build" / "model_folded.keras").run(images)
    on = reference > threshold
    assert np.sum(on.sum(axis=1) >= 2) >= 5  # several images carry two labels or more: the set matters
    for name in ("model_int8.tflite", "model_int8.onnx"):
        outputs = open_runner(tmp_path / "build" / name).run(images)
        same = np.mean(np.all((outputs > threshold) == on, axis=1))
        assert report.row(name)["agreement"] == pytest.approx(same)
        assert same != pytest.approx(np.mean(outputs.argmax(1) == reference.argmax(1)))  # argmax would differ
