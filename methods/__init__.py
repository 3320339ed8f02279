"""The reference methods, shipped as ``udabench.methods``; importing this registers them."""
from . import oracle, source_only  # noqa: F401
from . import adversarial  # noqa: F401  (adversarial, minent)
from . import self_training  # noqa: F401  (self-training: CBST)
from . import self_training_online  # noqa: F401
from . import clst  # noqa: F401  (clst)
from . import dacs  # noqa: F401  (dacs)
from . import daformer  # noqa: F401  (daformer; mic is a setting of dacs and daformer)
