# SegFormer MiT-B2, as mmseg's Cityscapes recipe (`segformer_mit-b2_8xb1-160k_cityscapes-1024x1024`), without the
# ImageNet-pretrained backbone (nothing is downloaded). Crop 1024x1024.
_base_ = ['./_base_/models/segformer_mit-b0.py']
model = dict(
    backbone=dict(embed_dims=64, num_layers=[3, 4, 6, 3]),
    decode_head=dict(in_channels=[64, 128, 320, 512]))
