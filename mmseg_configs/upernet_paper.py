# UPerNet ResNet-50 with the FCN auxiliary head, as mmseg's Cityscapes recipe
# (`upernet_r50_4xb2-80k_cityscapes-512x1024`). Crop 512x1024.
_base_ = ['./_base_/models/upernet_r50.py']
