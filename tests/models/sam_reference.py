"""MobileSAM's own modelling code (Apache-2.0, shipped in the ``mobilesam-lite`` wheel) as a test
reference, loaded without the package's ``__init__`` (which imports torchvision) and with a small
stand-in for the four timm helpers its TinyViT file imports (timm needs torchvision)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import torch


def _timm_stand_in() -> dict[str, types.ModuleType]:
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")

    class DropPath(torch.nn.Module):  # identity at inference (drop_path_rate is 0 for MobileSAM)
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = lambda t, std=1.0, **_: torch.nn.init.trunc_normal_(t, std=std)
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}


def modeling() -> types.ModuleType:
    """The ``mobile_sam.modeling`` package of mobilesam-lite, imported under a private name."""
    name = "_mobilesam_ref_modeling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("mobilesam_lite")
    assert spec is not None, "mobilesam-lite missing: make test installs it (requirements-test.txt, --no-deps)"
    path = os.path.join(spec.submodule_search_locations[0], "mobile_sam", "modeling")
    stand_in = _timm_stand_in()
    saved = {k: sys.modules.get(k) for k in stand_in}
    sys.modules.update(stand_in)
    try:
        mspec = importlib.util.spec_from_file_location(
            name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
        )
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[name] = mod
        mspec.loader.exec_module(mod)
    finally:  # the stand-in must not leak into other tests (transformers probes for timm)
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def build_vit_t(state_dict: dict) -> torch.nn.Module:
    """MobileSAM (``build_sam_vit_t``), loaded strictly from ``state_dict``, in eval mode."""
    m = modeling()
    sam = m.Sam(
        image_encoder=m.TinyViT(img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
                                depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7],
                                mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
                                mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8),
        prompt_encoder=m.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                       mask_in_chans=16),
        mask_decoder=m.MaskDecoder(num_multimask_outputs=3,
                                   transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                   num_heads=8),
                                   transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )  # fmt: skip
    sam.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
    return sam.eval()
