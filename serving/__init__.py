"""Serving the SFT and DPO adapters side by side: vLLM on Modal, or a small CPU server locally.

vllm_cmd (command line), modal_app (the Modal app), readiness (the shared HTTP check), deploy (redeploy
and record), local_engine / local_server / local_process (the local OpenAI-compatible server), cli.
"""
