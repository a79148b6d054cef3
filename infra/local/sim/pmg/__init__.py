"""The PMG cluster simulator: one behavioural model (model.py), one HTTP front-end per node (app.py)."""

from sim.pmg.app import PmgNodeApp, serve_cluster
from sim.pmg.model import ApiCall, ApiResult, PmgModel

__all__ = ["ApiCall", "ApiResult", "PmgModel", "PmgNodeApp", "serve_cluster"]
