"""The names of the deployed Modal objects. Root `storage.py` declares each object once under these names;
operator tools in `modal shell` look the same ones up."""

APP_NAME = "comfy-saas"
JOBS_DICT = f"{APP_NAME}-jobs"
WORK_QUEUE = f"{APP_NAME}-work"
MODELS_VOLUME = f"{APP_NAME}-models"
API_SECRET = f"{APP_NAME}-api"
R2_SECRET = f"{APP_NAME}-r2"
