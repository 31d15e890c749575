"""IQA backbones for test-time adaptation: the `IQABackbone` interface, tiny presets, UIQA, pyiqa zoo."""
from rayiqa.models.backbones.base import NORM_TYPES, IQABackbone, WrappedBackbone, wrap_module
from rayiqa.models.backbones.registry import backbone_names, create_backbone

__all__ = ["NORM_TYPES", "IQABackbone", "WrappedBackbone", "wrap_module", "backbone_names", "create_backbone"]
