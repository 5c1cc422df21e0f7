"""infini-attention: Infini-attention transformers with unbounded context at bounded memory.

Munkhdalai, Faruqui, Gopal, "Leave No Context Behind: Efficient Infinite Context Transformers
with Infini-attention" (arXiv 2404.07143).
"""

from . import ops
from .generation import stream_generate
from .models import InfiniTransformer, ModelConfig, ModelOutput, ModelState
from .ops import InfiniState, infini_attention, infini_attention_naive

__version__ = "0.1.0"

__all__ = [
    "InfiniState",
    "InfiniTransformer",
    "ModelConfig",
    "ModelOutput",
    "ModelState",
    "infini_attention",
    "infini_attention_naive",
    "ops",
    "stream_generate",
    "__version__",
]
