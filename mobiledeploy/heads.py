"""What a model's output means: the Head that turns its outputs into classes.

Most MobileNet classifiers end in one output per class and a softmax: the class is the argmax.
A binary classifier often ends in a single output instead (``Dense(1)``, as in the TensorFlow
transfer-learning tutorial): a sigmoid probability, or a raw logit when the model was trained
with ``from_logits=True``. Its class is 1 above 0.5 or above 0, and only the model can say which.
"""

from __future__ import annotations

from .graph import SHAPE_ONLY, activation_name, layer_graph
from .types import Head

def head_of(model) -> Head:
    """The model's head: ``classes`` for several outputs per image; for one, ``sigmoid`` when the
    last activation before the output is a sigmoid, else ``logit``."""
    units = model.outputs[0].shape[-1]
    if units != 1:
        return Head("classes")
    graph = layer_graph(model)
    name = model.outputs[0]._keras_history.operation.name
    while graph[name]["kind"] in SHAPE_ONLY and len(graph[name]["inputs"]) == 1:
        name = graph[name]["inputs"][0]
    return Head("sigmoid" if activation_name(model.get_layer(name)) == "sigmoid" else "logit")
