"""ComfyUI's native HTTP + WebSocket API (`/prompt`, `/ws`, `/history`, `/view`, ...) over our jobs.

A prompt is a job whose id is the prompt id; what only this surface needs (who submitted it, from which
client_id, its queue number) lives under its own keys (jobs/keys.py `native_*`), never in the job record.
The WebSocket fan-out reads progress from the store, never from a worker.
"""
