"""Params and multiply-adds against hand counts and the MobileNets paper (Howard et al., 2017)."""

import pytest

from mobiledeploy.evaluation.costs import model_costs, separable_blocks, what_if


@pytest.fixture(scope="module")
def mobilenet_224():
    import keras

    return model_costs(keras.applications.MobileNet(alpha=1.0, input_shape=(224, 224, 3), weights=None))


def test_hand_counted_tiny_model(tiny_model):
    costs = {row.name: row for row in model_costs(tiny_model).layers}
    # stem: 3x3 conv, 3 -> 8 channels, stride 2 on 24x24 -> 12x12; BN gives it a bias when folded
    assert costs["stem"].macs == 3 * 3 * 3 * 8 * 12 * 12 and costs["stem"].params == 3 * 3 * 3 * 8 + 8
    # depthwise with multiplier 2: 8 -> 16 channels, one 3x3 filter per output channel
    assert costs["dw"].macs == 3 * 3 * 16 * 12 * 12 and costs["dw"].params == 3 * 3 * 16 + 16
    assert costs["pw"].macs == 16 * 16 * 12 * 12 and costs["pw"].kind == "pointwise"
    # a SeparableConv2D is a depthwise and a pointwise row
    assert costs["sep/depthwise"].macs == 3 * 3 * 16 * 12 * 12
    assert costs["sep/pointwise"].macs == 16 * 16 * 12 * 12 and costs["sep/pointwise"].params == 16 * 16 + 16
    assert costs["logits"].macs == 16 * 6 and costs["logits"].params == 16 * 6 + 6
    assert costs["stem_bn"].kind == "batchnorm" and costs["stem_bn"].macs == 0


def test_paper_mobilenet_1_0_224(mobilenet_224):
    # Table 8: 569M mult-adds, 4.2M parameters (the paper gives params to 0.1M)
    assert mobilenet_224.macs == pytest.approx(569e6, rel=0.01)
    assert round(mobilenet_224.params / 1e6, 1) == 4.2


def test_paper_width_and_resolution_multipliers(mobilenet_224):
    half = what_if(mobilenet_224, alpha=0.5)  # Table 6: 0.5 MobileNet-224, 149M and 1.3M
    assert half.macs == pytest.approx(149e6, rel=0.01) and round(half.params / 1e6, 1) == 1.3
    low = what_if(mobilenet_224, rho=128 / 224)  # Table 7: 1.0 MobileNet-128, 186M, params unchanged
    assert low.macs == pytest.approx(186e6, rel=0.01) and low.params == mobilenet_224.params
    assert low.input_shape == (128, 128, 3)


def test_what_if_matches_building_the_variant(mobilenet_224):
    import keras

    built = model_costs(keras.applications.MobileNet(alpha=0.25, input_shape=(160, 160, 3), weights=None))
    guessed = what_if(mobilenet_224, alpha=0.25, rho=160 / 224)
    assert (guessed.macs, guessed.params) == (built.macs, built.params)


def test_separable_blocks_follow_the_formula(mobilenet_224):
    blocks = separable_blocks(mobilenet_224)
    assert len(blocks) == 13
    for block in blocks:
        assert block["ratio"] == pytest.approx(1 / block["n"] + 1 / 9)
    # the paper: 3x3 depthwise separable convolutions use 8 to 9 times less computation (N=64: 7.9x)
    assert all(7.8 < 1 / b["ratio"] < 9.0 for b in blocks)


def test_every_layer_gets_a_row_and_element_operations_are_counted():
    """A squeeze-excite block (MobileNetV3, EfficientNet): pooling, a Multiply, an Add, hard-swish,
    a Rescaling, a Concatenate and a Dense over a feature map. inspect used to refuse the
    Multiply ('no cost formula') of a model quantize accepted."""
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 3))
    x = layers.Rescaling(1 / 255, name="scale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = layers.Activation("hard_silu", name="swish")(x)
    squeeze = layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    gate = layers.Conv2D(8, 1, activation="sigmoid", name="gate")(squeeze)
    excited = layers.Multiply(name="excite")([x, gate])
    x = layers.Add(name="residual")([x, excited])
    x = layers.Concatenate(name="concat")([x, excited])
    x = layers.MaxPooling2D(2, name="pool")(x)
    outputs = layers.Dense(5, name="per_position")(x)  # a Dense on (4, 4, 16): 16 positions
    model = keras.Model(inputs, outputs)
    report = model_costs(model)
    rows = {row.name: row for row in report.layers}
    assert [row.name for row in report.layers] == [layer.name for layer in model.layers]  # one row each
    assert rows["excite"].kind == "multiply" and rows["excite"].ops == 8 * 8 * 8  # one per output element
    assert rows["residual"].ops == 8 * 8 * 8 and rows["swish"].ops == 8 * 8 * 8 and rows["scale"].ops == 8 * 8 * 3
    assert rows["squeeze"].ops == 8 * 8 * 8  # every input element is summed once
    assert rows["pool"].ops == 4 * 4 * 16 * 4 and rows["concat"].ops == 0
    assert rows["per_position"].macs == 16 * 16 * 5 and rows["per_position"].params == 16 * 5 + 5
    assert rows["conv"].macs == 3 * 3 * 3 * 8 * 8 * 8 and rows["gate"].macs == 8 * 8
    assert report.macs == sum(r.macs for r in report.layers) and report.ops == sum(r.ops for r in report.layers)
    assert report.ops == 8 * 8 * 3 + 3 * 8 * 8 * 8 + 8 * 8 * 8 + 4 * 4 * 16 * 4
    assert [r.name for r in what_if(report, alpha=0.5).layers] == [r.name for r in report.layers]


def test_python_api_mirrors_the_cli(tiny_model_file):
    import json

    from click.testing import CliRunner

    import mobiledeploy
    from mobiledeploy.cli.main import main

    report = mobiledeploy.inspect_model(tiny_model_file, alpha=0.5)
    data = json.loads(CliRunner().invoke(main, ["inspect", str(tiny_model_file), "--alpha", "0.5", "--json"]).output)
    assert (report.macs, report.params) == (data["macs"], data["params"])


def test_input_size_counts_a_model_saved_without_one(tmp_path):
    """A base saved with input_shape=(None, None, 3) is counted at the --input-size given, as
    the same network built at that size."""
    import json

    import keras
    from click.testing import CliRunner

    from mobiledeploy.cli.main import main

    keras.applications.MobileNet(alpha=0.25, input_shape=(None, None, 3), include_top=False, weights=None,
                                 pooling="avg").save(tmp_path / "any.keras")
    fixed = model_costs(keras.applications.MobileNet(alpha=0.25, input_shape=(160, 128, 3), include_top=False,
                                                     weights=None, pooling="avg"))
    refused = CliRunner().invoke(main, ["inspect", str(tmp_path / "any.keras")])
    assert refused.exit_code == 1 and "--input-size" in refused.output
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "any.keras"), "--input-size", "160x128", "--json"])
    assert result.exit_code == 0, result.output
    counted = json.loads(result.output)
    assert (counted["macs"], counted["params"]) == (fixed.macs, fixed.params)
