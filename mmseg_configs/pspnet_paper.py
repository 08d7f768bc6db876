# PSPNet ResNet-50-D8 with the FCN auxiliary head, as mmseg's Cityscapes recipe (`pspnet_r50-d8_4xb2-80k_
# cityscapes-512x1024`). Crop 512x1024 from 1024x2048 Cityscapes images. For ResNet-101 set
# `model = dict(backbone=dict(depth=101))` in a derived config.
_base_ = ['./_base_/models/pspnet_r50-d8.py']
