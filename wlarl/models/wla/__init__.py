"""WLA policy in transformers style: `WLAConfig`, `WLAPolicy`, `WLAProcessor`."""

from transformers import AutoConfig, AutoModel

from wlarl.models.wla.configuration_wla import WLAConfig, tiny_llama_config
from wlarl.models.wla.modeling_wla import WLAPolicy
from wlarl.models.wla.processing_wla import WLAProcessor

AutoConfig.register("wla", WLAConfig, exist_ok=True)
AutoModel.register(WLAConfig, WLAPolicy, exist_ok=True)

__all__ = ["WLAConfig", "WLAPolicy", "WLAProcessor", "tiny_llama_config"]
