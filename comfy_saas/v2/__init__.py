"""The Comfy API v2 surface (`/api/v2/...`): the contract in ../shared/comfy-api-v2/openapi.yaml."""
