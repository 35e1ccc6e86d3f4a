"""shadowcam runtime: ingestion, shadow inference, storage, labels and evaluation.

Importing ``pipeline`` (or any module of it except the CLI's training commands) never imports
torch, mlflow or albumentations: GPU servers and edge boxes may run only the runtime.
"""

__version__ = "0.1.0"
