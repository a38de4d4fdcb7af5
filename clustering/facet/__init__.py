"""FaceT (Face Transformer) clustering: Relation Encoder + Linkage Predictor, trained on labelled
features; importing this package registers the ``facet`` method."""

from clustering.facet.config import FaceTConfig
from clustering.facet.method import FaceT
from clustering.facet.model import FaceTModel, LinkagePredictor, RelationEncoder

__all__ = ["FaceT", "FaceTConfig", "FaceTModel", "LinkagePredictor", "RelationEncoder"]
