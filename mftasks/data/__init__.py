"""Dataset preparation: corpus → sentencepiece → packed MindRecord, with a verified manifest."""
from .report import InspectReport, inspect
from .loader import load
from .manifest import read as read_manifest
from .manifest import root_of as dataset_root
from .manifest import verify
from .prepare import PrepareResult, PrepareSpec, plan, prepare

__all__ = ["prepare", "plan", "PrepareSpec", "PrepareResult", "inspect", "InspectReport", "load", "read_manifest",
           "dataset_root", "verify"]
