"""Serving the SFT and DPO adapters side by side: vLLM on Modal (GPU), or vLLM's CPU build locally.

vllm_cmd (the one command builder), modal_app (the Modal app), local_vllm (start/stop the local vLLM),
readiness (the shared HTTP check), deploy (redeploy, record, stop), cli.
"""
