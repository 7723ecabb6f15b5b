"""Stands in for TensorFlow on the lent GPU machine, whose image has none (bench/device_check.sh).

sim_jax's trainer imports CLU's metric writers, which import TensorFlow and TensorBoard's hparams
plugin at module import. The timed train step (bench/train_step.py) writes no summaries, so on
that machine this module, put first on PYTHONPATH only when `import tensorflow` fails there,
lets the trainer import: it is TensorBoard's own TensorFlow stub (`tensorboard.compat.
tensorflow_stub`, what TensorBoard runs on without TensorFlow) plus the two names the hparams
plugin reads at import, `make_tensor_proto` (TensorBoard's implementation) and
`keras.callbacks.Callback`. Anything else, e.g. `tf.summary` when a writer is created, fails
with AttributeError. Never on the path of a training run.
"""

import sys
import types

from tensorboard.compat import tensorflow_stub
from tensorboard.util import tensor_util

tensorflow_stub.make_tensor_proto = tensor_util.make_tensor_proto
tensorflow_stub.keras = types.SimpleNamespace(callbacks=types.SimpleNamespace(Callback=object))
sys.modules[__name__] = tensorflow_stub
