"""What a model's output means: the Head that turns its outputs into classes.

Most MobileNet classifiers end in one output per class and a softmax: the class is the argmax.
A binary classifier often ends in a single output instead (``Dense(1)``, as in the TensorFlow
transfer-learning tutorial): a sigmoid probability, or a raw logit when the model was trained
with ``from_logits=True``. Its class is 1 above 0.5 or above 0, and only the model can say which.
Several sigmoid outputs make a multi-label classifier: one independent decision per label.
(Several linear outputs read as classes: logits trained for a softmax and for sigmoids look
alike, and only a sigmoid in the model tells them apart; ``--head label-logits`` says which.)
"""

from __future__ import annotations

from ..errors import MobiledeployError
from .graph import SHAPE_ONLY, activation_name, layer_graph
from ..reports import HEADS, Head

SINGLE_OUTPUT = ("sigmoid", "logit")


def head_for(model, requested: str = "auto") -> Head:
    """The head the user asked for (``--head``), checked against the model's output width, or
    the one ``head_of`` reads off the model for ``auto``."""
    if requested == "auto":
        return head_of(model)
    if requested not in HEADS:
        raise MobiledeployError(f"unknown head '{requested}'; expected auto, {', '.join(HEADS)}")
    width = model.outputs[0].shape[-1]
    if (requested in SINGLE_OUTPUT) != (width == 1):
        needs = "a single output" if requested in SINGLE_OUTPUT else "several outputs"
        raise MobiledeployError(f"--head {requested} needs {needs}; the model has {width} per image. "
                                f"Pick {'sigmoid or logit' if width == 1 else 'classes, labels or label-logits'}")
    return Head(requested)


def head_of(model) -> Head:
    """The model's head, from the last activation before the output: for several outputs per
    image ``labels`` when it is a sigmoid, else ``classes``; for one, ``sigmoid`` or ``logit``."""
    graph = layer_graph(model)
    name = model.outputs[0]._keras_history.operation.name
    while graph[name]["kind"] in SHAPE_ONLY and len(graph[name]["inputs"]) == 1:
        name = graph[name]["inputs"][0]
    sigmoid = activation_name(model.get_layer(name)) == "sigmoid"
    if model.outputs[0].shape[-1] != 1:
        return Head("labels" if sigmoid else "classes")
    return Head("sigmoid" if sigmoid else "logit")
