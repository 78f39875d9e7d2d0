"""What a model's output means: the Head that turns its outputs into classes.

Most MobileNet classifiers end in one output per class and a softmax: the class is the argmax.
A binary classifier often ends in a single output instead (``Dense(1)``, as in the TensorFlow
transfer-learning tutorial): a sigmoid probability, or a raw logit when the model was trained
with ``from_logits=True``. Its class is 1 above 0.5 or above 0, and only the model can say which.
Several sigmoid outputs make a multi-label classifier: one independent decision per label.
(Several linear outputs read as classes: logits trained for a softmax and for sigmoids look
alike, and only a sigmoid in the model tells them apart.)
"""

from __future__ import annotations

from .graph import SHAPE_ONLY, activation_name, layer_graph
from .types import Head

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
