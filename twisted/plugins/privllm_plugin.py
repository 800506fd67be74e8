"""twistd plugin: `twistd -n privllm --env dev|prod [--config FILE] [--role router|node]`.
Everything lives in privllm.tap (`--worker-fd` is how a router's parent starts its workers)."""

from twisted.application.service import ServiceMaker

privllm = ServiceMaker(
    "privllm",
    "privllm.tap",
    "Private LLM gateway: HPKE-encrypted chat streamed from llama-server",
    "privllm",
)
