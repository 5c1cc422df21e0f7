"""infini-attention: Infini-attention transformers with unbounded context at bounded memory.

Munkhdalai, Faruqui, Gopal, "Leave No Context Behind: Efficient Infinite Context Transformers
with Infini-attention" (arXiv 2404.07143).
"""

import warnings

# torch warns at import when NumPy is absent; nothing here uses NumPy, so keep stderr clean
# (the CLI promises one-line errors). Only this one message is filtered.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

from . import ops  # noqa: E402 (after the filter)
from .generation import stream_generate  # noqa: E402
from .models import InfiniTransformer, ModelConfig, ModelOutput, ModelState  # noqa: E402
from .models.convert import from_hf  # noqa: E402 (transformers is imported only when called)
from .ops import InfiniState, infini_attention, infini_attention_naive  # noqa: E402
from .pretrained import load_pretrained, save_pretrained  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "InfiniState",
    "InfiniTransformer",
    "ModelConfig",
    "ModelOutput",
    "ModelState",
    "from_hf",
    "infini_attention",
    "infini_attention_naive",
    "load_pretrained",
    "ops",
    "save_pretrained",
    "stream_generate",
    "__version__",
]
