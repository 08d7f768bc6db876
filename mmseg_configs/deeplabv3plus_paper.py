# DeepLabV3+ ResNet-50-D8 with the FCN auxiliary head, as mmseg's Cityscapes recipe
# (`deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024`). Crop 512x1024.
_base_ = ['./_base_/models/deeplabv3plus_r50-d8.py']
