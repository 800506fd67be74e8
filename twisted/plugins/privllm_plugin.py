"""twistd plugin: `twistd -n privllm --env dev|prod [--config FILE]`. Everything lives in privllm.tap."""

from twisted.application.service import ServiceMaker

privllm = ServiceMaker(
    "privllm",
    "privllm.tap",
    "Private LLM gateway: HPKE-encrypted chat streamed from llama-server",
    "privllm",
)
